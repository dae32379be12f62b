"""What makes a masked diffusion LM, shared by training (`conversion`) and sampling (`sampling`).

- `noise`: schedules alpha(t) with derivatives, absorbing and uniform corruption, ELBO / flat /
  CART loss weights.
- `attention`: who attends to whom (causal, bidirectional, anneal:N, block:B and mixtures,
  per-document), as 4D masks or the model's own `is_causal=False`.
"""

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)
