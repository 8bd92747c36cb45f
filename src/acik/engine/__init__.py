"""acik's inference engine: a static KV cache, sampling, and continuous batching.

```python
from acik.engine import Engine, Request
engine = Engine(llm, max_batch_size=8)
for event in engine.submit(Request(prompt_ids=ids, max_new_tokens=64)):
    print(event.text, end="")
```
"""

from acik.engine.cache import KVCache
from acik.engine.scheduler import Engine, Event, Handle, Request

__all__ = ["Engine", "Event", "Handle", "KVCache", "Request"]
