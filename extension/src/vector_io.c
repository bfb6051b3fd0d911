/*
 * vector_io.c -- pgvector `vector` values straight from the worker's binary float32 replies.
 *
 * The worker answers embedding requests with n x d little-endian float32 (row-major). Turning
 * those bytes into vectors here avoids a round trip through text (float formatting and parsing
 * dominate for 1024-dim vectors). We do not link against pgvector: its on-disk layout is
 * stable and small, and is reproduced below; the SQL declarations name the `vector` type of the
 * installed pgvector, so the values are checked against it by type, not by linking.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "port/pg_bswap.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "varatt.h"

/* pgvector's limit for the `vector` type (VECTOR_MAX_DIM). */
#define PGVECTOR_MAX_DIM 16000

/* pgvector's Vector: varlena header, int16 dim, int16 unused (0), float4 x[dim]. */
typedef struct PgVector
{
	int32		vl_len_;
	int16		dim;
	int16		unused;
	float4		x[FLEXIBLE_ARRAY_MEMBER];
} PgVector;

PG_FUNCTION_INFO_V1(qwen_vector_from_float32);
PG_FUNCTION_INFO_V1(qwen_vectors_from_float32);

static void
check_dimensions(int64 dims)
{
	if (dims < 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("a vector needs at least 1 dimension")));
	if (dims > PGVECTOR_MAX_DIM)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("vector of %lld dimensions exceeds pgvector's limit of %d", (long long) dims, PGVECTOR_MAX_DIM),
				 errhint("Request fewer dimensions from the worker (Qwen3 embeddings can be truncated, MRL).")));
}

static void
check_whole_floats(size_t len)
{
	if (len % sizeof(float4) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%zu bytes are not a whole number of float32 values", len),
				 errhint("The worker must send little-endian float32, 4 bytes per value.")));
}

/* One vector from dims float32 values at src (any alignment). */
static PgVector *
vector_from_bytes(const char *src, int dims)
{
	Size		size = offsetof(PgVector, x) + sizeof(float4) * dims;
	PgVector   *vector = (PgVector *) palloc(size);

	SET_VARSIZE(vector, size);
	vector->dim = (int16) dims;
	vector->unused = 0;
	memcpy(vector->x, src, sizeof(float4) * dims);

	for (int i = 0; i < dims; i++)
	{
#ifdef WORDS_BIGENDIAN
		uint32		bits;

		memcpy(&bits, &vector->x[i], sizeof(bits));
		bits = pg_bswap32(bits);
		memcpy(&vector->x[i], &bits, sizeof(bits));
#endif
		/* The same checks (and words) as pgvector's input functions. */
		if (isnan(vector->x[i]))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("NaN not allowed in vector"),
					 errdetail("Element %d of the float32 input is NaN.", i)));
		if (isinf(vector->x[i]))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("infinite value not allowed in vector"),
					 errdetail("Element %d of the float32 input is infinite.", i)));
	}
	return vector;
}

/* qwen._vector_from_float32(bytea) RETURNS vector */
Datum
qwen_vector_from_float32(PG_FUNCTION_ARGS)
{
	bytea	   *bytes = PG_GETARG_BYTEA_PP(0);
	size_t		len = VARSIZE_ANY_EXHDR(bytes);

	check_whole_floats(len);
	check_dimensions(len / sizeof(float4));
	PG_RETURN_POINTER(vector_from_bytes(VARDATA_ANY(bytes), (int) (len / sizeof(float4))));
}

/* qwen._vectors_from_float32(bytea, dims int) RETURNS vector[]: a row-major n x dims matrix. */
Datum
qwen_vectors_from_float32(PG_FUNCTION_ARGS)
{
	bytea	   *bytes = PG_GETARG_BYTEA_PP(0);
	int32		dims = PG_GETARG_INT32(1);
	size_t		len = VARSIZE_ANY_EXHDR(bytes);
	const char *src = VARDATA_ANY(bytes);
	Oid			array_type = get_fn_expr_rettype(fcinfo->flinfo);
	Oid			vector_type = OidIsValid(array_type) ? get_element_type(array_type) : InvalidOid;
	size_t		row_bytes;
	int			rows;
	Datum	   *vectors;
	int16		typlen;
	bool		typbyval;
	char		typalign;

	if (!OidIsValid(vector_type))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("qwen._vectors_from_float32 must be declared to return vector[]")));
	check_whole_floats(len);
	check_dimensions(dims);
	row_bytes = sizeof(float4) * (size_t) dims;
	if (len % row_bytes != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%zu bytes are not a whole number of %d-dimensional float32 rows", len, dims),
				 errhint("The reply holds %zu float32 values; check the dimensions the worker was asked for.",
						 len / sizeof(float4))));
	if (len / row_bytes > (size_t) MaxArraySize)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many vectors in one float32 matrix")));
	rows = (int) (len / row_bytes);

	vectors = palloc(sizeof(Datum) * Max(rows, 1));
	for (int r = 0; r < rows; r++)
		vectors[r] = PointerGetDatum(vector_from_bytes(src + r * row_bytes, dims));

	get_typlenbyvalalign(vector_type, &typlen, &typbyval, &typalign);
	PG_RETURN_ARRAYTYPE_P(construct_array(vectors, rows, vector_type, typlen, typbyval, typalign));
}
