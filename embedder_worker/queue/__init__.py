"""The queue consumer: claims queued rows, embeds them, writes the vectors back with a compare-and-set.

One module per job:
- `connection.py`  a database connection that comes back after a server restart
- `claims.py`      what a worker serves, claiming a batch with a lease
- `embedding.py`   embedding a claimed batch, isolating rows the model fails on
- `writeback.py`   the bulk, conditional write-back and the failure records
- `maintenance.py` deferred HNSW index builds and the swap at the end of `qwen_alter`
- `heartbeat.py`   the worker's row in `qwen.workers`
- `consumer.py`    the pipeline that ties them together (database I/O overlapped with the model)
- `status.py`      reading `qwen_status` for the CLI
"""

from .claims import Claim, Target
from .consumer import Consumer, ConsumerOptions
from .retry import RetryPolicy

__all__ = ["Claim", "Consumer", "ConsumerOptions", "RetryPolicy", "Target"]
