"""A stand-in for the vLLM engine in placement tests: reports where it runs. A module of its own that imports
nothing heavy, so that each engine actor's process starts in the time Ray's own imports take."""

from workers.types import EngineInfo, EngineSpec


class WhereAmI:
    """Reports its node, GPU ids and CUDA_VISIBLE_DEVICES."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec

    def ready(self) -> EngineInfo:
        return EngineInfo.here()

    def given(self) -> EngineSpec:
        return self.spec
