-- Half of each queue page stays free, so a claim's lease updates are all HOT (see 30_queue.ddl.sql).
-- Pages written before the upgrade keep their fill until the queue drains through them.
ALTER TABLE qwen.queue SET (fillfactor = 45);
