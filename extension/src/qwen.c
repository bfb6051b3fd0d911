/*
 * qwen.c -- module entry: magic block and the GUCs of the extension.
 *
 * The C code of qwen is only the transport to the embedder worker (transport.c);
 * everything else is SQL.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include <limits.h>

#include "qwen.h"

/* PostgreSQL 18 records a name and version with the magic block; earlier versions have the plain one. */
#ifdef PG_MODULE_MAGIC_EXT
PG_MODULE_MAGIC_EXT(.name = "qwen", .version = QWEN_MODULE_VERSION);
#else
PG_MODULE_MAGIC;
#endif

char	   *qwen_worker_url = NULL;
char	   *qwen_worker_token = NULL;
int			qwen_request_timeout_ms = 30000;
int			qwen_connect_timeout_ms = 2000;

void		_PG_init(void);

void
_PG_init(void)
{
	/*
	 * Where the database sends requests is a superuser decision (PGC_SUSET):
	 * an ordinary user must not be able to redirect query text and the token.
	 * The default is a socket in a directory only root (or a service manager, e.g. systemd's
	 * RuntimeDirectory=qwen) can create: a socket in a world-writable directory such as /tmp
	 * could be squatted by any local user while the worker is down.
	 */
	DefineCustomStringVariable("qwen.worker_url",
							   "URL of the qwen embedder worker's request server.",
							   "unix:///path/to.sock or http://host:port",
							   &qwen_worker_url,
							   QWEN_DEFAULT_WORKER_URL,
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	/* GUC_SUPERUSER_ONLY hides the value from SHOW and pg_settings for others. */
	DefineCustomStringVariable("qwen.worker_token",
							   "Bearer token sent to the embedder worker.",
							   NULL,
							   &qwen_worker_token,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("qwen.request_timeout",
							"Total time allowed for one request to the worker.",
							NULL,
							&qwen_request_timeout_ms,
							30000, 1, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("qwen.connect_timeout",
							"Time allowed to connect to the worker.",
							NULL,
							&qwen_connect_timeout_ms,
							2000, 1, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("qwen");
}

PG_FUNCTION_INFO_V1(qwen_module_version);

/*
 * The version the shared library was built as: lets SQL detect a library that does not match
 * the installed scripts (a half-done upgrade), and loads the module (and its GUCs) on demand.
 */
Datum
qwen_module_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(QWEN_MODULE_VERSION));
}
