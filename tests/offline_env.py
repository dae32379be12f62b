"""The test process works offline: tests never reach a hub (the hub tests serve one on 127.0.0.1 and
switch the flag off for themselves). Imported first by tests/conftest.py, so the flags are in the
environment of the suite and of the commands it starts before transformers or huggingface_hub is
imported. ar2mdm itself never sets them: whether a user's machine is offline is the user's choice."""

import os

for _flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_flag, "1")
