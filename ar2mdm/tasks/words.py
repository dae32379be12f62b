"""Built-in word lists the task generators draw from.

Every list holds plain words with no leading space; tasks put a space before each word when it
appears mid-sentence. With no tokenizer, tasks use the full lists (a word-level tokenizer built
from task text makes every word one token). With a tokenizer, tasks keep only the words that are a
single token after a space (`base.single_token_words`), so clean and corrupted prompts align.
"""

from __future__ import annotations

# Word lists are kept as compact paragraphs, not one word per line:
# fmt: off
# Common English first names, roughly by frequency in US usage; unique, capitalised.
NAMES: tuple[str, ...] = (
    "Mary", "John", "James", "Robert", "Michael", "William", "David", "Richard", "Joseph",
    "Thomas", "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Paul", "Steven", "Andrew",
    "Kenneth", "Joshua", "Kevin", "Brian", "George", "Edward", "Ronald", "Timothy", "Jason",
    "Jeffrey", "Ryan", "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen", "Larry",
    "Justin", "Scott", "Brandon", "Benjamin", "Samuel", "Frank", "Gregory", "Raymond",
    "Alexander", "Patrick", "Jack", "Dennis", "Jerry", "Tyler", "Aaron", "Henry", "Adam",
    "Peter", "Nathan", "Zachary", "Kyle", "Walter", "Harold", "Carl", "Arthur", "Roger",
    "Joe", "Juan", "Albert", "Lawrence", "Dylan", "Jesse", "Bruce", "Ralph", "Roy", "Louis",
    "Philip", "Bobby", "Johnny", "Eugene", "Russell", "Victor", "Martin", "Ernest",
    "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
    "Karen", "Nancy", "Lisa", "Betty", "Margaret", "Sandra", "Ashley", "Kimberly", "Emily",
    "Donna", "Michelle", "Dorothy", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie",
    "Rebecca", "Sharon", "Laura", "Cynthia", "Kathleen", "Amy", "Angela", "Shirley", "Anna",
    "Brenda", "Pamela", "Emma", "Nicole", "Helen", "Samantha", "Katherine", "Christine",
    "Debra", "Rachel", "Carolyn", "Janet", "Catherine", "Maria", "Heather", "Diane", "Ruth",
    "Julie", "Olivia", "Joyce", "Virginia", "Victoria", "Kelly", "Lauren", "Christina",
    "Joan", "Evelyn", "Judith", "Megan", "Andrea", "Cheryl", "Hannah", "Jacqueline",
    "Martha", "Gloria", "Teresa", "Ann", "Sara", "Madison", "Frances", "Kathryn", "Janice",
    "Jean", "Abigail", "Alice", "Julia", "Judy", "Sophia", "Grace", "Denise", "Amber",
    "Marilyn", "Beverly", "Danielle", "Theresa", "Diana", "Natalie", "Brittany", "Charlotte",
    "Marie", "Kayla", "Alexis", "Lori", "Rose", "Tom", "Sam", "Ben", "Max", "Alex", "Kate",
    "Lucy", "Jane", "Bill", "Dan", "Tim", "Jim", "Bob", "Mike", "Ted",
)

# Places that read naturally after "the" (IOI templates).
PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "station", "park",
    "library", "market", "beach", "museum", "church", "house", "bank", "farm", "cafe",
    "theater", "airport", "gym",
)

# Objects that take "a" (consonant-initial; IOI templates).
OBJECTS: tuple[str, ...] = (
    "drink", "ring", "book", "letter", "snack", "necklace", "bone", "basketball",
    "computer", "gift", "flower", "ball", "hat", "key", "pen", "cake", "box", "watch",
    "bottle", "phone",
)

# Concrete nouns for induction sequences (lower case, distinct from one another).
NOUNS: tuple[str, ...] = (
    "apple", "river", "table", "window", "garden", "mountain", "pencil", "doctor", "button",
    "candle", "rabbit", "guitar", "forest", "bridge", "planet", "kitchen", "jacket", "tiger",
    "mirror", "bottle", "camera", "island", "ladder", "engine", "pillow", "orange", "violin",
    "wallet", "rocket", "carpet", "lemon", "hammer", "ocean", "desert", "horse", "train",
    "cloud", "stone", "chair", "clock", "bread", "cheese", "paper", "glass", "shirt", "truck",
    "house", "music", "money", "water", "fire", "snow", "rain", "wind", "moon", "star", "sun",
    "tree", "leaf", "bird", "fish", "dog", "cat", "cow", "pig", "duck", "bear", "wolf", "lion",
    "king", "queen", "city", "road", "door", "wall", "floor", "roof", "boat", "ship", "car",
    "bike", "bus", "bed", "cup", "plate", "spoon", "knife", "fork", "salt", "sugar", "milk",
    "tea", "coffee", "wine", "beer", "egg", "rice", "corn", "bean", "nut", "seed", "rose",
    "grass", "sand", "hill", "lake", "field", "farm", "shop", "school", "church", "bank",
    "park", "street", "village", "castle", "tower", "garage", "office", "letter", "story",
    "song", "dance", "game", "ball", "box", "bag", "hat", "shoe", "sock", "coat", "ring",
    "key", "lock", "map", "book", "page", "word", "pen", "ink", "paint", "brush", "color",
)

# Nouns for Greater-Than prompts ("The {noun} lasted from the year ...").
EVENTS: tuple[str, ...] = (
    "war", "expedition", "project", "dynasty", "reign", "drought", "occupation", "journey",
    "construction", "rebellion", "strike", "famine", "campaign", "voyage", "siege",
)
# fmt: on
