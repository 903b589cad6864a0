"""The WorldScape video world model (issue 9; seeds 000-002): a diffusion transformer over
RGB-D frames with heterogeneous control experts (:mod:`.dit`), chunk-causal generation with a
KV cache, and the memory-aware cache that bounds it (:mod:`.memory`)."""

from .dit import (VideoDiT, VideoDiTConfig, action_guided_chunks, chunk_ids, generate_bidirectional,
                  generate_chunked)
from .memory import MemoryConfig, MemoryKVCache

__all__ = ["VideoDiT", "VideoDiTConfig", "action_guided_chunks", "chunk_ids", "generate_bidirectional",
           "generate_chunked", "MemoryConfig", "MemoryKVCache"]
