-- What a registration may point at, in one place. Every rule here is checked from the catalogue
-- (never by evaluating a tenant's object) by qwen._registration_shape, which qwen_register calls for
-- its errors and the trigger on qwen.registrations calls for every row written, however it is written.

GRANT SELECT ON qwen.models TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON qwen.registrations TO PUBLIC;
GRANT USAGE ON SEQUENCE qwen.registrations_id_seq TO PUBLIC;

-- A type whose text form nobody can redefine: built in (below FirstNormalObjectId), a base, range or
-- multirange type (so no user domain, enum or composite; arrays of built-in types are built in).
-- Only a superuser can add a cast or change the I/O functions of such a type. Not money (790, and its
-- array 791): its text form follows lc_monetary, a session setting.
CREATE OR REPLACE FUNCTION qwen._safe_type(p_type oid) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT t.oid < 16384 AND t.typtype IN ('b', 'r', 'm') AND t.oid NOT IN (790, 791)
                     FROM pg_type t WHERE t.oid = p_type), false)
$$;

-- A table and every partition below it, at any depth (pg_partition_tree lists nothing for a table that
-- is not partitioned).
CREATE OR REPLACE FUNCTION qwen._tree(p_source regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p_source UNION SELECT pt.relid FROM pg_partition_tree(p_source) AS pt
$$;

-- How the extension owner names a registration's table (or one partition of it) in the FROM of a read it
-- makes with its own rights: a plain table with ONLY, so an inheritance child added later (a foreign table,
-- say) is never read; a partitioned table as itself (its partitions are checked to be tables when they
-- join it: qwen._on_ddl_end).
CREATE OR REPLACE FUNCTION qwen._owner_read_sql(p_table regclass) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN c.relkind = 'r' THEN 'ONLY ' ELSE '' END || p_table::text FROM pg_class c WHERE c.oid = p_table
$$;

-- The column types a text column may have: text, varchar, char, name.
CREATE OR REPLACE FUNCTION qwen._text_type(p_type oid) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT p_type IN (25, 1043, 1042, 19) $$;

CREATE OR REPLACE FUNCTION qwen._column_type(p_source regclass, p_column name) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
    WHERE a.attrelid = p_source AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- Check that p_source may be registered with p_text_column, and return its primary key columns and
-- their types. Raises the error a user needs otherwise.
CREATE OR REPLACE FUNCTION qwen._registration_shape(p_source regclass, p_text_column name,
                                                    OUT key_columns name[], OUT key_types text[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel pg_class;
    text_type oid;
    bad record;
BEGIN
    SELECT * INTO rel FROM pg_class c WHERE c.oid = p_source;
    IF NOT FOUND OR rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', p_source USING HINT = 'Register a plain or partitioned table.';
    END IF;
    PERFORM qwen._citus_check_table(p_source);  -- which Citus tables (28_citus.sql; nothing without Citus)
    IF rel.relpersistence = 't' THEN
        RAISE EXCEPTION '% is a temporary table', p_source
            USING HINT = 'The worker reads and writes in its own sessions, which cannot see temporary tables: register a permanent or unlogged table.';
    END IF;
    IF NOT pg_has_role(current_user, rel.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table % to register it', p_source
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Ask the table''s owner or a superuser to call qwen_register.';
    END IF;
    -- in a SQL_ASCII database the bytes of a text have no declared meaning (and may not be UTF-8):
    -- the worker could neither decode nor embed them
    IF current_setting('server_encoding') = 'SQL_ASCII' THEN
        RAISE EXCEPTION 'database % has encoding SQL_ASCII; qwen cannot know what its texts mean', current_database()
            USING HINT = 'Create the database with ENCODING ''UTF8'' (any encoding but SQL_ASCII works) and move the data there.';
    END IF;
    -- every table below it (partitions, inheritance children) must be a table too: reading a foreign
    -- table would use someone else's user mapping
    SELECT c.oid::regclass AS child, c.relkind INTO bad
    FROM qwen._tree(p_source) AS pt(relid) JOIN pg_class c ON c.oid = pt.relid
    WHERE c.relkind NOT IN ('r', 'p') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'partition % of % is not a table', bad.child, p_source
            USING HINT = 'qwen keeps only plain tables embedded: foreign tables cannot be partitions of a registered table.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = p_source) AND rel.relkind = 'r' THEN
        RAISE EXCEPTION 'table % has inheritance children', p_source
            USING HINT = 'Register each child table, or use declarative partitioning.';
    END IF;

    SELECT a.atttypid INTO text_type FROM pg_attribute a
    WHERE a.attrelid = p_source AND a.attname = p_text_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" does not exist in table %', p_text_column, p_source
            USING ERRCODE = 'undefined_column', HINT = 'Pass the name of the column holding the text to embed.';
    END IF;
    IF NOT qwen._text_type(text_type) THEN
        RAISE EXCEPTION 'column "%" of table % has type %, not text', p_text_column, p_source, format_type(text_type, NULL)
            USING HINT = 'The text column must be text, varchar or char (not a domain over them).';
    END IF;

    SELECT array_agg(a.attname ORDER BY k.ord), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord)
      INTO key_columns, key_types
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = p_source AND i.indisprimary;
    IF key_columns IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', p_source
            USING HINT = 'qwen needs a primary key to find rows again: ALTER TABLE ... ADD PRIMARY KEY (...).';
    END IF;
    SELECT a.attname, a.atttypid INTO bad
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) AS k(attnum)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = p_source AND i.indisprimary AND NOT qwen._safe_type(a.atttypid)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'primary key column "%" of table % has type %, which qwen cannot key rows by',
            bad.attname, p_source, format_type(bad.atttypid, NULL)
            USING HINT = 'Key columns must have built-in types (integer, bigint, text, uuid, date, …): not a domain, enum or composite type, whose text form its owner can redefine.';
    END IF;
END
$$;

-- The columns a registration reads still have the types it was registered with (a table's owner can
-- ALTER a column's type at any time): checked before any qwen code renders keys or reads texts.
CREATE OR REPLACE FUNCTION qwen._columns_safe(p_source regclass, p_text_column name, p_key_columns name[])
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) = cardinality(p_key_columns) + 1
           AND bool_and(CASE WHEN a.attname = p_text_column THEN qwen._text_type(a.atttypid)
                             ELSE qwen._safe_type(a.atttypid) END)
    FROM pg_attribute a
    WHERE a.attrelid = p_source AND a.attnum > 0 AND NOT a.attisdropped
      AND (a.attname = p_text_column OR a.attname = ANY (p_key_columns))
$$;

-- A registration's stored tsvector column (hybrid search): a column of the table of type tsvector exactly.
-- Not a domain or any other type: the hybrid query reads it as whoever searches, and a type its owner
-- defines (a domain, a cast to tsvector) would be the owner's code run with the searcher's rights. Not a
-- virtual generated column (computed on every read, and not indexable). A stored generated column whose
-- expression names text search configurations must name p_config (the one queries are parsed with):
-- documents stemmed by one configuration and queries by another rarely share a lexeme (p_config NULL:
-- not checked; hybrid searches re-check the rest before every read, as the column's type can be ALTERed).
-- Read from the catalogue only (pg_get_expr prints the expression; nothing of the table is evaluated).
CREATE OR REPLACE FUNCTION qwen._check_text_search_column(p_source regclass, p_column name, p_config regconfig)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col record;
    configs text[];
    hint text := 'Use a column of type tsvector kept by PostgreSQL, e.g. ALTER TABLE … ADD COLUMN tsv tsvector '
                 'GENERATED ALWAYS AS (to_tsvector(''english'', body)) STORED, with text_search_config => ''english'' '
                 '(qwen_alter(source, text_search_column => ''tsv'') changes it; => '''' goes back to the expression).';
BEGIN
    SELECT a.atttypid, a.attgenerated, t.typtype, t.typbasetype,
           (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
             WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum) AS expr
      INTO col
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = p_source AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'text_search_column "%" does not exist in table %', p_column, p_source
            USING ERRCODE = 'undefined_column', HINT = hint;
    END IF;
    IF col.atttypid <> 'pg_catalog.tsvector'::regtype THEN
        RAISE EXCEPTION 'text_search_column "%" of table % has type %, not tsvector%', p_column, p_source,
            format_type(col.atttypid, NULL), CASE WHEN col.typtype = 'd' THEN ' (a domain is not accepted)' ELSE '' END
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'The column must be of type pg_catalog.tsvector itself: searches read it with the searching '
                         'role''s rights, and a domain or another type would run its owner''s code there. ' || hint;
    END IF;
    IF col.attgenerated = 'v' THEN
        RAISE EXCEPTION 'text_search_column "%" of table % is a virtual generated column', p_column, p_source
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'A virtual column is computed on every read and cannot be indexed: declare it GENERATED ALWAYS AS (…) STORED.';
    END IF;
    IF col.attgenerated = 's' AND p_config IS NOT NULL THEN
        SELECT array_agg(DISTINCT replace(m[1], '''''', '''')) INTO configs
          FROM regexp_matches(col.expr, '''((?:[^'']|'''')*)''::regconfig', 'g') AS m;
        IF configs IS NOT NULL AND NOT p_config::text = ANY (configs) THEN
            RAISE EXCEPTION 'text_search_column "%" of table % is generated with text search configuration %, not %',
                p_column, p_source, array_to_string(configs, ', '), p_config
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('Queries are parsed with text_search_config: pass text_search_config => %L.', configs[1]);
        END IF;
    END IF;
END
$$;

-- Object names derived from the registration id: unique, short, and the same in any encoding.
CREATE OR REPLACE FUNCTION qwen._index_name(p_id int) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('qwen_%s_hnsw', p_id)::name $$;

CREATE OR REPLACE FUNCTION qwen._shadow_column(p_id int) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('qwen_%s_next', p_id)::name $$;

CREATE OR REPLACE FUNCTION qwen._shadow_index_name(p_id int) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('qwen_%s_next_hnsw', p_id)::name $$;

-- Every write to qwen.registrations, as the writing role: a new row gets its key columns, key types and
-- index name from the catalogue (whatever the writer put there); what identifies the embedded data
-- never changes afterwards; object names can only be the derived ones.
CREATE OR REPLACE FUNCTION qwen._check_registration() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    shape record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        shape := qwen._registration_shape(NEW.source, NEW.text_column);
        NEW.key_columns := shape.key_columns;
        NEW.key_types := shape.key_types;
        NEW.index_name := CASE WHEN NEW.index_mode = 'none' THEN NULL ELSE qwen._index_name(NEW.id) END;
        NEW.next_model := NULL; NEW.next_dimensions := NULL; NEW.next_vector_type := NULL;
        NEW.next_column := NULL; NEW.next_index_name := NULL; NEW.alter_started_at := NULL;
        IF NEW.text_search_column IS NOT NULL THEN
            PERFORM qwen._check_text_search_column(NEW.source, NEW.text_search_column, NEW.text_search_config);
        END IF;
        RETURN NEW;
    END IF;
    IF (NEW.id, NEW.source, NEW.text_column, NEW.embedding_column, NEW.key_columns, NEW.key_types)
       IS DISTINCT FROM (OLD.id, OLD.source, OLD.text_column, OLD.embedding_column, OLD.key_columns, OLD.key_types) THEN
        RAISE EXCEPTION 'the table, columns and keys of qwen registration % cannot change', OLD.id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'qwen_unregister it and qwen_register the table again.';
    END IF;
    IF NEW.index_name IS DISTINCT FROM OLD.index_name AND NEW.index_name IS DISTINCT FROM qwen._index_name(OLD.id)
       OR NEW.next_index_name IS NOT NULL AND NEW.next_index_name IS DISTINCT FROM OLD.next_index_name
          AND NEW.next_index_name <> qwen._shadow_index_name(OLD.id)
       OR NEW.next_column IS NOT NULL AND NEW.next_column IS DISTINCT FROM OLD.next_column
          AND NEW.next_column <> qwen._shadow_column(OLD.id) THEN
        RAISE EXCEPTION 'qwen registration % can only use the object names qwen derives from its id', OLD.id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Use qwen_alter and qwen_create_index instead of writing qwen.registrations.';
    END IF;
    -- a stored tsvector column is checked whenever it or the configuration changes (however the row is written)
    IF NEW.text_search_column IS NOT NULL
       AND (NEW.text_search_column, NEW.text_search_config) IS DISTINCT FROM (OLD.text_search_column, OLD.text_search_config) THEN
        PERFORM qwen._check_text_search_column(NEW.source, NEW.text_search_column, NEW.text_search_config);
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER registration_rules BEFORE INSERT OR UPDATE ON qwen.registrations
    FOR EACH ROW EXECUTE FUNCTION qwen._check_registration();
