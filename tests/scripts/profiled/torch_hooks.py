"""A script to profile (``cudaevents profile``) that says whether torch was imported before it
started and, given ``--torch``, imports torch and prints how many global module hooks are
installed. Run by tests/test_torch_layers_cpu.py."""

import sys

print("torch imported at start:", "torch" in sys.modules)
if "--torch" in sys.argv:
    import torch.nn.modules.module as mm
    print("global hooks:", len(mm._global_forward_pre_hooks), len(mm._global_forward_hooks),
          len(mm._global_backward_hooks))
