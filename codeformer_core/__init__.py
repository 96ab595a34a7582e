"""Face restoration library: CodeFormer network, checkpoints, and (later) detection,
alignment, degradation and metrics. Has no Ray dependency; runs in a notebook, a test or an actor."""

__version__ = "0.1.0"
