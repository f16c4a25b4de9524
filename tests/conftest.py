import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
# one thread: with other processes on a 2-core machine, 2 torch threads can run 20-100x slower (DESIGN.md)
torch.set_num_threads(1)
