/*
 * transport.c -- HTTP round trips to the embedder worker through libcurl.
 *
 * SQL: qwen._worker_request(path, body, content_type) (POST) and qwen._worker_get(path), to the
 * endpoints in worker_endpoints only; neither is executable by PUBLIC (sql/src/10_module.sql).
 * The worker listens on `unix:///abs/path.sock` (HTTP over that socket) or `http://host:port[/prefix]`
 * (qwen.worker_url, superuser-only).
 *
 * One CURL easy handle per backend, made on first use and reset before every request: the
 * connection to the worker stays open between calls, so a round trip over a unix socket costs
 * a fraction of a millisecond instead of a connect per call.
 *
 * Rules that keep libcurl and PostgreSQL apart:
 *  - nothing inside a curl callback may ereport() (a longjmp out of curl_easy_perform() would
 *    leave the handle half-way through a transfer), so callbacks only set flags and use
 *    allocations that cannot throw;
 *  - cancellation (pg_cancel_backend, statement_timeout, termination) is noticed by the progress
 *    callback, which aborts the transfer; CHECK_FOR_INTERRUPTS() then raises it after curl returns;
 *  - what curl malloc()s for a request (the header list) is freed on every path (PG_FINALLY);
 *    the response is collected in palloc'd memory of the calling context, so an ERROR leaks nothing;
 *  - CURLOPT_NOSIGNAL: curl must not touch the signal handlers PostgreSQL relies on.
 */
#include "postgres.h"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "varatt.h"

#include "qwen.h"
#include "worker_error.h"

/* A larger reply is refused: it would not fit in memory comfortably, nor is any legitimate one so large. */
#define QWEN_MAX_RESPONSE_BYTES ((size_t) 256 * 1024 * 1024)
#define QWEN_USER_AGENT "qwen-pg/" QWEN_MODULE_VERSION " (PostgreSQL extension)"

/* Where requests go, resolved from qwen.worker_url for one request. */
typedef struct WorkerTarget
{
	const char *url;			/* qwen.worker_url verbatim, for messages */
	char	   *base;			/* what curl requests, before the path */
	char	   *socket_path;	/* unix socket, or NULL for TCP */
} WorkerTarget;

/* The reply under construction; filled only by curl callbacks, so nothing in it may throw. */
typedef struct ReplyBuffer
{
	CURL	   *curl;
	char	   *data;			/* a bytea: VARHDRSZ bytes of header, then the body */
	size_t		len;			/* body bytes received */
	size_t		capacity;		/* body bytes that fit in data */
	bool		too_large;
	bool		out_of_memory;
} ReplyBuffer;

/* What one curl_easy_perform() left behind, read before the handle is reused. */
typedef struct TransferOutcome
{
	CURLcode	code;
	long		status;
	long		os_errno;
	bool		connected;		/* a connection existed (new or reused) when it ended */
	bool		interrupted;	/* our progress callback stopped it */
	char		curl_message[CURL_ERROR_SIZE];
} TransferOutcome;

static CURL *backend_handle = NULL;

PG_FUNCTION_INFO_V1(qwen_worker_request);
PG_FUNCTION_INFO_V1(qwen_worker_get);


/* ---- the per-backend handle --------------------------------------------------------------- */

static CURL *
worker_handle(void)
{
	static bool curl_ready = false;

	if (!curl_ready)
	{
		/* Once per process; backends are single-threaded, which curl_global_init() requires. */
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("could not initialise libcurl")));
		curl_ready = true;
	}
	if (backend_handle == NULL)
	{
		backend_handle = curl_easy_init();
		if (backend_handle == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl handle")));
	}
	/* Forget the previous request's options; the open connections stay in the handle's cache. */
	curl_easy_reset(backend_handle);
	return backend_handle;
}


/* ---- what to request ---------------------------------------------------------------------- */

static bool
has_prefix_ci(const char *text, const char *prefix)
{
	return pg_strncasecmp(text, prefix, strlen(prefix)) == 0;
}

static bool
is_url_text(const char *text)
{
	for (const char *p = text; *p; p++)
		if ((unsigned char) *p <= 0x20 || (unsigned char) *p >= 0x7f)
			return false;
	return true;
}

static void
invalid_worker_url(const char *url, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("qwen.worker_url \"%s\" is not usable: %s", url, why),
			 errhint("Use unix:///path/to/worker.sock (same host) or http://host:port, e.g. "
					 "ALTER DATABASE … SET qwen.worker_url = '%s'.", QWEN_DEFAULT_WORKER_URL)));
}

static WorkerTarget
resolve_worker_url(void)
{
	WorkerTarget target;
	const char *url = qwen_worker_url ? qwen_worker_url : "";

	target.url = url;
	target.socket_path = NULL;

	if (url[0] == '\0')
		invalid_worker_url(url, "it is empty");
	if (!is_url_text(url))
		invalid_worker_url(url, "it contains spaces or control characters");

	if (has_prefix_ci(url, "unix://"))
	{
		const char *path = url + strlen("unix://");

		if (path[0] != '/' || path[1] == '\0')
			invalid_worker_url(url, "a unix socket needs an absolute path (unix:///abs/path.sock)");
		/* sun_path holds 108 bytes with the NUL on Linux, 104 on the BSDs. */
		if (strlen(path) >= 104)
			invalid_worker_url(url, "the socket path is longer than a unix socket address allows");
		target.socket_path = pstrdup(path);
		/* The host name is only the Host header; the socket decides where the bytes go. */
		target.base = pstrdup("http://localhost");
	}
	else if (has_prefix_ci(url, "http://"))
	{
		const char *authority = url + strlen("http://");
		int			len = strlen(url);

		if (authority[0] == '\0' || authority[0] == '/')
			invalid_worker_url(url, "it names no host");
		if (strpbrk(authority, "?#") != NULL)
			invalid_worker_url(url, "it must not carry a query or fragment");
		while (len > 0 && url[len - 1] == '/')
			len--;
		target.base = pnstrdup(url, len);
	}
	else if (has_prefix_ci(url, "https://"))
		invalid_worker_url(url, "https is not supported; the worker speaks plain HTTP on a unix socket or a private network");
	else
		invalid_worker_url(url, "the scheme is neither unix:// nor http://");

	return target;
}

/*
 * The only requests the SQL functions make.  Anything else is refused before a byte is sent, so
 * the bearer token (and query text) can never reach another endpoint of the worker or of whatever
 * else listens at qwen.worker_url: exact matches, hence no "..", query, fragment or %-escape.
 */
typedef struct WorkerEndpoint
{
	bool		post;			/* POST with a body, else GET */
	const char *path;
} WorkerEndpoint;

static const WorkerEndpoint worker_endpoints[] = {
	{true, "/v1/embeddings"},	/* qwen_embed, qwen_search */
	{true, "/v1/rerank"},		/* qwen_rerank, qwen_rerank_score, qwen_search(rerank => true) */
	{false, "/health"},			/* liveness */
	{false, "/v1/models"},		/* what the worker serves */
};

static void
check_request_path(const char *path, bool post)
{
	for (int i = 0; i < lengthof(worker_endpoints); i++)
		if (worker_endpoints[i].post == post && strcmp(worker_endpoints[i].path, path) == 0)
			return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("qwen worker request %s \"%s\" is not an endpoint the extension uses",
					post ? "POST" : "GET", is_url_text(path) ? path : "(not printable)"),
			 errhint("POST goes to /v1/embeddings or /v1/rerank; GET to /health or /v1/models.")));
}

/*
 * A socket in a directory any user can write (and that is not sticky) can be replaced by any local
 * user, who would then receive query text and the bearer token: refuse to send there.  A directory
 * that cannot be examined is left to connect() to explain.
 */
static void
check_socket_directory(const WorkerTarget *target)
{
	char	   *directory = pstrdup(target->socket_path);
	char	   *slash = strrchr(directory, '/');
	struct stat st;

	slash[slash == directory ? 1 : 0] = '\0';
	if (stat(directory, &st) != 0)
		return;
	if ((st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("qwen worker socket \"%s\" is in a directory any user can write", target->socket_path),
				 errdetail("Any local user could replace the socket and receive the requests and the token."),
				 errhint("Listen in a directory only the worker's OS user can write, e.g. qwen-pg worker --listen %s.",
						 QWEN_DEFAULT_WORKER_URL)));
}

static void
check_header_value(const char *value, const char *what)
{
	for (const char *p = value; *p; p++)
		if (((unsigned char) *p < 0x20 && *p != '\t') || (unsigned char) *p == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s contains a control character", what)));
}


/* ---- curl callbacks: flags and non-throwing allocations only ------------------------------ */

static size_t
collect_reply(char *chunk, size_t size, size_t count, void *userdata)
{
	ReplyBuffer *reply = (ReplyBuffer *) userdata;
	size_t		n = size * count;

	if (n > QWEN_MAX_RESPONSE_BYTES - reply->len)
	{
		reply->too_large = true;
		return 0;				/* makes curl stop with CURLE_WRITE_ERROR */
	}
	if (reply->len + n > reply->capacity)
	{
		size_t		wanted = Max(reply->capacity * 2, reply->len + n);
		curl_off_t	announced = -1;
		char	   *grown;

		/* The first growth can take the announced size at once instead of doubling up to it. */
		if (curl_easy_getinfo(reply->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced) == CURLE_OK &&
			announced > 0 && (size_t) announced > wanted)
			wanted = (size_t) announced;
		wanted = Min(wanted, QWEN_MAX_RESPONSE_BYTES);
		grown = repalloc_extended(reply->data, VARHDRSZ + wanted, MCXT_ALLOC_NO_OOM);
		if (grown == NULL)
		{
			reply->out_of_memory = true;
			return 0;
		}
		reply->data = grown;
		reply->capacity = wanted;
	}
	memcpy(reply->data + VARHDRSZ + reply->len, chunk, n);
	reply->len += n;
	return n;
}

/* Would CHECK_FOR_INTERRUPTS() end the query now?  Other interrupts may wait for the reply. */
static bool
query_must_stop(void)
{
	if (!InterruptPending)
		return false;
	return QueryCancelPending || ProcDiePending
#if PG_VERSION_NUM >= 170000
		|| TransactionTimeoutPending
#endif
		;
}

static int
stop_on_interrupt(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	TransferOutcome *outcome = (TransferOutcome *) clientp;

	if (query_must_stop())
	{
		outcome->interrupted = true;
		return 1;				/* CURLE_ABORTED_BY_CALLBACK */
	}
	return 0;
}


/* ---- one transfer ------------------------------------------------------------------------- */

static struct curl_slist *
request_headers(const char *content_type)
{
	struct curl_slist *headers = NULL;
	struct curl_slist *next;
	const char *lines[3];
	int			n = 0;
	char	   *auth = NULL;

	if (content_type != NULL)
		lines[n++] = psprintf("Content-Type: %s", content_type);
	/* Without this curl waits for "100 Continue" before sending a body over 1 MB. */
	lines[n++] = "Expect:";
	if (qwen_worker_token != NULL && qwen_worker_token[0] != '\0')
	{
		/* The token is only ever in this header: never in a message. */
		check_header_value(qwen_worker_token, "qwen.worker_token");
		auth = psprintf("Authorization: Bearer %s", qwen_worker_token);
		lines[n++] = auth;
	}

	for (int i = 0; i < n; i++)
	{
		next = curl_slist_append(headers, lines[i]);
		if (next == NULL)
		{
			curl_slist_free_all(headers);
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
		}
		headers = next;
	}
	if (auth != NULL)
	{
		explicit_bzero(auth, strlen(auth));
		pfree(auth);
	}
	return headers;
}

static void
set_transfer_options(CURL *curl, const WorkerTarget *target, const char *url, struct curl_slist *headers,
					 ReplyBuffer *reply, TransferOutcome *outcome)
{
	curl_easy_setopt(curl, CURLOPT_URL, url);
	if (target->socket_path != NULL)
		curl_easy_setopt(curl, CURLOPT_UNIX_SOCKET_PATH, target->socket_path);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http");
#else
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS, (long) CURLPROTO_HTTP);
#endif
	/* Requests go to the configured worker only: no proxy from the environment, no redirects. */
	curl_easy_setopt(curl, CURLOPT_PROXY, "");
	curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_USERAGENT, QWEN_USER_AGENT);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long) qwen_connect_timeout_ms);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long) qwen_request_timeout_ms);
	curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) QWEN_MAX_RESPONSE_BYTES);

	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect_reply);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, reply);
	curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, stop_on_interrupt);
	curl_easy_setopt(curl, CURLOPT_XFERINFODATA, outcome);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, outcome->curl_message);
}

static void
read_outcome(CURL *curl, TransferOutcome *outcome)
{
	curl_off_t	pretransfer_us = 0;

	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &outcome->status);
	curl_easy_getinfo(curl, CURLINFO_OS_ERRNO, &outcome->os_errno);
	/* Zero until a connection (new or reused) was ready to send on. */
	curl_easy_getinfo(curl, CURLINFO_PRETRANSFER_TIME_T, &pretransfer_us);
	outcome->connected = pretransfer_us > 0;
}

/*
 * Send one request; returns with *reply filled and *outcome describing how it ended.
 * body == NULL means GET.
 */
static void
perform_transfer(const WorkerTarget *target, const char *path, const char *body, size_t body_len,
				 const char *content_type, ReplyBuffer *reply, TransferOutcome *outcome)
{
	CURL	   *curl = worker_handle();
	char	   *url = psprintf("%s%s", target->base, path);
	struct curl_slist *volatile headers = NULL;

	memset(outcome, 0, sizeof(*outcome));
	reply->curl = curl;
	reply->data = palloc(VARHDRSZ + 1024);
	reply->capacity = 1024;
	reply->len = 0;
	reply->too_large = false;
	reply->out_of_memory = false;

	headers = request_headers(content_type);
	PG_TRY();
	{
		set_transfer_options(curl, target, url, headers, reply, outcome);
		if (body != NULL)
		{
			curl_easy_setopt(curl, CURLOPT_POST, 1L);
			curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
			curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body_len);
		}
		else
			curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);

		outcome->code = curl_easy_perform(curl);
		read_outcome(curl, outcome);
	}
	PG_FINALLY();
	{
		/* The handle outlives this request: it must not keep pointers into freed memory. */
		curl_easy_setopt(curl, CURLOPT_HTTPHEADER, NULL);
		curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, NULL);
		curl_slist_free_all(headers);
	}
	PG_END_TRY();
}


/* ---- turning the outcome into a result or an ERROR ---------------------------------------- */

static const char *
server_os_user(void)
{
	struct passwd *pw = getpwuid(geteuid());

	return pw != NULL ? pw->pw_name : "?";
}

static void
report_unreachable(const WorkerTarget *target, const TransferOutcome *outcome, bool connect_timed_out)
{
	const char *how;

	if (connect_timed_out)
		how = psprintf("no connection within qwen.connect_timeout (%d ms)", qwen_connect_timeout_ms);
	else if (target->socket_path != NULL && outcome->os_errno != 0)
		how = psprintf("could not connect to unix socket \"%s\": %s", target->socket_path, strerror(outcome->os_errno));
	else
		how = outcome->curl_message[0] ? outcome->curl_message : curl_easy_strerror(outcome->code);

	if (target->socket_path != NULL && outcome->os_errno == EACCES)
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("qwen worker unreachable at %s", target->url),
				 errdetail("%s", how),
				 errhint("PostgreSQL runs as OS user \"%s\": make the socket and its directories accessible to it.",
						 server_os_user())));

	ereport(ERROR,
			(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
			 errmsg("qwen worker unreachable at %s", target->url),
			 errdetail("%s", how),
			 target->socket_path != NULL
			 ? errhint("Start it with: qwen-pg worker --dsn … --listen %s — or point qwen.worker_url at the "
					   "running worker (ALTER DATABASE … SET qwen.worker_url = '…').", target->url)
			 : errhint("Start it with: qwen-pg worker --dsn … --listen %s --token … — or point qwen.worker_url at the "
					   "running worker (ALTER DATABASE … SET qwen.worker_url = '…').", target->url)));
}

static void
report_transfer_failure(const WorkerTarget *target, const ReplyBuffer *reply, const TransferOutcome *outcome)
{
	if (outcome->interrupted)
	{
		/* The cancel or termination that stopped the transfer is raised here, curl being done. */
		CHECK_FOR_INTERRUPTS();
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("request to the qwen worker at %s was interrupted", target->url)));
	}
	if (reply->too_large || outcome->code == CURLE_FILESIZE_EXCEEDED)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("qwen worker reply exceeds %zu MB", QWEN_MAX_RESPONSE_BYTES / (1024 * 1024)),
				 errhint("Send fewer or shorter inputs per call.")));
	if (reply->out_of_memory)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory"),
				 errdetail("Failed to store a qwen worker reply of more than %zu bytes.", reply->len)));

	switch (outcome->code)
	{
		case CURLE_COULDNT_CONNECT:
		case CURLE_COULDNT_RESOLVE_HOST:
			report_unreachable(target, outcome, false);
			break;
		case CURLE_OPERATION_TIMEDOUT:
			if (!outcome->connected)
				report_unreachable(target, outcome, true);
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("qwen worker at %s did not answer within qwen.request_timeout (%d ms)",
							target->url, qwen_request_timeout_ms),
					 errhint("The worker may be overloaded; raise qwen.request_timeout for longer inputs.")));
			break;
		case CURLE_URL_MALFORMAT:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("qwen.worker_url \"%s\" is not a valid URL", target->url),
					 errdetail("%s", outcome->curl_message)));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("request to the qwen worker at %s failed: %s", target->url,
							outcome->curl_message[0] ? outcome->curl_message : curl_easy_strerror(outcome->code))));
	}
}

static int
sqlstate_for_http_status(long status)
{
	switch (status)
	{
		case 400:
		case 422:
			return ERRCODE_INVALID_PARAMETER_VALUE;
		case 401:
		case 403:
			return ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
		case 413:
			return ERRCODE_PROGRAM_LIMIT_EXCEEDED;
		case 429:
		case 503:
		case 504:
			return ERRCODE_INSUFFICIENT_RESOURCES;
		default:
			return ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
	}
}

static const char *
hint_for_http_status(long status)
{
	switch (status)
	{
		case 401:
		case 403:
			return "Set qwen.worker_token to the worker's --token where only superusers can read it: "
				"postgresql.conf or ALTER SYSTEM, with session_preload_libraries = 'qwen' (docs/PRIVILEGES.md).";
		case 429:
		case 503:
			return "The worker is busy: retry the statement shortly, or raise the worker's --max-pending "
				"(or run more workers) if this happens under normal load.";
		case 504:
			return "The request waited longer than the worker's --request-timeout: retry, or raise that "
				"limit (and qwen.request_timeout) if the worker is merely slow.";
		default:
			return NULL;
	}
}

static void
report_http_error(const char *path, const ReplyBuffer *reply, long status)
{
	char	   *message = worker_error_message(reply->data + VARHDRSZ, reply->len);
	const char *hint = hint_for_http_status(status);

	ereport(ERROR,
			(errcode(sqlstate_for_http_status(status)),
			 errmsg("qwen worker returned HTTP %ld: %s", status, message),
			 errdetail("Request: %s.", path),
			 hint != NULL ? errhint("%s", hint) : 0));
}

/* The whole exchange: the reply body as a bytea, or an ERROR. */
static bytea *
worker_round_trip(const char *path, const char *body, size_t body_len, const char *content_type)
{
	WorkerTarget target = resolve_worker_url();
	ReplyBuffer reply;
	TransferOutcome outcome;

	check_request_path(path, body != NULL);
	if (content_type != NULL)
		check_header_value(content_type, "content type");
	if (target.socket_path != NULL)
		check_socket_directory(&target);

	perform_transfer(&target, path, body, body_len, content_type, &reply, &outcome);

	/* A cancel that arrived just as the reply completed is honoured too. */
	CHECK_FOR_INTERRUPTS();
	if (outcome.code != CURLE_OK)
		report_transfer_failure(&target, &reply, &outcome);
	if (outcome.status < 200 || outcome.status > 299)
		report_http_error(path, &reply, outcome.status);

	SET_VARSIZE(reply.data, VARHDRSZ + reply.len);
	return (bytea *) reply.data;
}


/* ---- SQL entry points --------------------------------------------------------------------- */

/* qwen._worker_request(path text, body bytea, content_type text) RETURNS bytea: a POST. */
Datum
qwen_worker_request(PG_FUNCTION_ARGS)
{
	char	   *path = text_to_cstring(PG_GETARG_TEXT_PP(0));
	bytea	   *body = PG_GETARG_BYTEA_PP(1);
	char	   *content_type = text_to_cstring(PG_GETARG_TEXT_PP(2));

	if (content_type[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("qwen worker request needs a content type")));

	PG_RETURN_BYTEA_P(worker_round_trip(path, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), content_type));
}

/* qwen._worker_get(path text) RETURNS bytea: a GET (health, metrics). */
Datum
qwen_worker_get(PG_FUNCTION_ARGS)
{
	char	   *path = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PG_RETURN_BYTEA_P(worker_round_trip(path, NULL, 0, NULL));
}
