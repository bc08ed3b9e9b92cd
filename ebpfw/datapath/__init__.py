"""load: the BPF side of ebpfw (program build, pinned maps, map contents)."""

from .abi import Shape, shape_for
from .maps import Datapath

__all__ = ["Datapath", "Shape", "shape_for"]
