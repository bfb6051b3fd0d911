/*
 * worker_error.c -- the message to quote when the worker answers with an HTTP error.
 *
 * The worker (and any OpenAI-compatible server behind it) explains a failure in a JSON body:
 *   {"error": {"message": "..."}}   OpenAI style, our request server
 *   {"error": "..."}                 simple servers
 *   {"detail": "..." | [{"msg": ...}, ...]}   FastAPI / Starlette
 * We quote that message, cut to QWEN_WORKER_MESSAGE_MAX bytes.  From a FastAPI validation list
 * only the "msg" fields are taken: its "input" fields would echo the request body, which may
 * hold the user's text and must not end up in an ERROR (or the server log).
 * A body that is not such JSON is quoted as text, with control characters replaced.
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "nodes/miscnodes.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"

#include "worker_error.h"

/* Larger bodies are not parsed as JSON: an error message is short, an HTML page is not JSON. */
#define JSON_PARSE_LIMIT (64 * 1024)

static JsonbValue *
object_field(JsonbContainer *object, const char *key, JsonbValue *result)
{
	if (!JsonContainerIsObject(object))
		return NULL;
	return getKeyJsonValueFromContainer(object, key, strlen(key), result);
}

static char *
string_value(JsonbValue *value)
{
	if (value == NULL || value->type != jbvString)
		return NULL;
	return pnstrdup(value->val.string.val, value->val.string.len);
}

/* FastAPI's validation errors: a list of objects each with a human "msg". */
static char *
joined_msg_fields(JsonbContainer *list)
{
	StringInfoData out;
	JsonbIterator *it;
	JsonbValue	element;
	JsonbIteratorToken token;

	if (!JsonContainerIsArray(list))
		return NULL;
	initStringInfo(&out);
	it = JsonbIteratorInit(list);
	while ((token = JsonbIteratorNext(&it, &element, true)) != WJB_DONE)
	{
		JsonbValue	msg;
		char	   *text;

		if (token != WJB_ELEM || element.type != jbvBinary)
			continue;
		text = string_value(object_field(element.val.binary.data, "msg", &msg));
		if (text == NULL)
			continue;
		if (out.len > 0)
			appendStringInfoString(&out, "; ");
		appendStringInfoString(&out, text);
	}
	return out.len > 0 ? out.data : NULL;
}

static char *
message_from_json(const char *body)
{
	ErrorSaveContext escontext = {T_ErrorSaveContext};
	Datum		parsed;
	Jsonb	   *json;
	JsonbValue	error;
	JsonbValue	field;
	JsonbValue *found;
	char	   *text;

	if (!DirectInputFunctionCallSafe(jsonb_in, (char *) body, InvalidOid, -1,
									 (Node *) &escontext, &parsed))
		return NULL;
	json = DatumGetJsonbP(parsed);
	if (!JB_ROOT_IS_OBJECT(json))
		return NULL;

	found = object_field(&json->root, "error", &error);
	if (found != NULL && found->type == jbvBinary &&
		(text = string_value(object_field(found->val.binary.data, "message", &field))) != NULL)
		return text;
	if ((text = string_value(found)) != NULL)
		return text;

	found = object_field(&json->root, "detail", &field);
	if ((text = string_value(found)) != NULL)
		return text;
	if (found != NULL && found->type == jbvBinary &&
		(text = joined_msg_fields(found->val.binary.data)) != NULL)
		return text;

	return string_value(object_field(&json->root, "message", &field));
}

/* Text that is safe to put in a one-line message; bytes outside ASCII only when valid. */
static char *
printable_text(const char *text, size_t len, bool ascii_only)
{
	char	   *out = palloc(len + 1);

	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) text[i];

		if (c == '\n' || c == '\r' || c == '\t')
			out[i] = ' ';
		else if (c < 0x20 || c == 0x7f || (ascii_only && c >= 0x80))
			out[i] = '?';
		else
			out[i] = (char) c;
	}
	out[len] = '\0';
	return out;
}

static char *
clipped(char *message)
{
	int			len = strlen(message);
	int			keep;

	if (len <= QWEN_WORKER_MESSAGE_MAX)
		return message;
	keep = pg_mbcliplen(message, len, QWEN_WORKER_MESSAGE_MAX);
	return psprintf("%.*s...", keep, message);
}

/*
 * The server's explanation in `body` (not NUL-terminated), as a palloc'd one-line string in
 * the database encoding.
 */
char *
worker_error_message(const char *body, size_t len)
{
	bool		valid_text;
	char	   *message = NULL;

	if (len == 0)
		return pstrdup("(empty response)");

	/* NUL bytes or an invalid encoding: not JSON we could read, quote it as ASCII. */
	valid_text = memchr(body, '\0', len) == NULL &&
		pg_verifymbstr(body, (int) Min(len, (size_t) PG_INT32_MAX), true);

	if (valid_text && len <= JSON_PARSE_LIMIT)
		message = message_from_json(pnstrdup(body, len));
	if (message != NULL)
		return clipped(printable_text(message, strlen(message), false));

	/* Cut first (an HTML page may be megabytes), then at a character boundary. */
	len = Min(len, (size_t) QWEN_WORKER_MESSAGE_MAX * 2);
	message = printable_text(body, len, !valid_text);
	return clipped(message);
}
