"""``python -m timm_gsp.cli``: the ``timm-gsp`` command (how ``torchrun`` starts it)."""
import sys

from .parser import main

sys.exit(main())
