"""Session-wide test settings: never reach a model hub, keep every store inside tmp dirs."""

import os

# Tests must never hit a hub: timm/huggingface downloads fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_USE_OLD_CACHE", "0")
# Two cores: keep torch from oversubscribing when several processes run.
os.environ.setdefault("OMP_NUM_THREADS", "2")
