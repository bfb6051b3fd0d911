-- qwen_status is split into a definer half (queue counts) and an invoker half (row counts, last_error).
DROP VIEW @extschema@.qwen_status;
DROP FUNCTION qwen._status();
