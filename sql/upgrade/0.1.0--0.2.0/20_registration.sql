-- 0.2.0 derives object names from the registration id (qwen._index_name, …); existing registrations
-- keep the names they were created with.
DROP FUNCTION qwen._object_name(text, text);

-- qwen_retry_failed goes through the registration (its owner may write it) instead of the queue.
ALTER TABLE qwen.registrations ADD COLUMN retry_failed_at timestamptz;
