#ifndef QWEN_H
#define QWEN_H

#define QWEN_MODULE_VERSION "0.2.0"
#define QWEN_DEFAULT_WORKER_URL "unix:///run/qwen/worker.sock"

extern char *qwen_worker_url;
extern char *qwen_worker_token;
extern int	qwen_request_timeout_ms;
extern int	qwen_connect_timeout_ms;

#endif
