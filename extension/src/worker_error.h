#ifndef QWEN_WORKER_ERROR_H
#define QWEN_WORKER_ERROR_H

#include <stddef.h>

/* Longest server message quoted in an ERROR (bytes, cut at a character boundary). */
#define QWEN_WORKER_MESSAGE_MAX 500

extern char *worker_error_message(const char *body, size_t len);

#endif
