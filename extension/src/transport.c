/*
 * transport.c -- HTTP round trips to the embedder worker through libcurl.
 * (placeholder: filled in by the transport work)
 */
#include "postgres.h"

#include "fmgr.h"

#include "qwen.h"
