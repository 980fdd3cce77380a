-- 003_search_fold: the search folds case in every script, not only ASCII.
-- The simple configuration lowercases under the database's LC_CTYPE, which
-- for a "C" database (scripts/pgtmp's, and a common choice) is ASCII only:
-- "МОСКВЕ" did not find "москве". parley_fold lowercases with ICU's root
-- locale when the server has ICU (Debian's PostgreSQL has), else under the
-- database's own locale; final sigma is made sigma (ICU lowercases a word's
-- last Σ to ς, a typed query has σ); then accents go (unaccent, as in 002).
-- ASCII text is left as it is (nothing to unaccent; the simple dictionary
-- lowercases ASCII itself): a third of the vector's cost on every send.
-- Every stored search vector is made again with it, once.
DO $do$
DECLARE
    s name;
    coll text := '';
BEGIN
    SELECT n.nspname INTO s FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'unaccent';
    IF EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'
                AND collnamespace = 'pg_catalog'::regnamespace) THEN
        coll := ' COLLATE pg_catalog."und-x-icu"';
    END IF;
    EXECUTE format('CREATE FUNCTION parley_fold(text) RETURNS text'
                   ' LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS %L',
                   format('SELECT CASE WHEN octet_length($1) = length($1) THEN $1'
                          ' ELSE %I.unaccent(%L::regdictionary, translate(lower($1%s), %L, %L)) END',
                          s, quote_ident(s) || '.unaccent', coll, 'ς', 'σ'));
END
$do$;

CREATE OR REPLACE FUNCTION parley_tsquery(words text[]) RETURNS tsquery
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT to_tsquery('simple', coalesce(string_agg(
               '''' || replace(replace(parley_fold(w), '\', '\\'), '''', '''''') || ''''
               || CASE WHEN i = cardinality(words) THEN ':*' ELSE '' END, ' & ' ORDER BY i), ''))
      FROM unnest(words) WITH ORDINALITY AS k(w, i)
$$;

-- As in 002: NUL bytes made spaces, for the rows already stored.
CREATE OR REPLACE FUNCTION pg_temp.body_text(b bytea) RETURNS text LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    p integer;
BEGIN
    LOOP
        p := position('\x00'::bytea IN b);
        EXIT WHEN p = 0;
        b := set_byte(b, p - 1, 32);
    END LOOP;
    RETURN convert_from(b, 'UTF8');
END
$$;
UPDATE messages SET tsv = to_tsvector('simple', parley_fold(pg_temp.body_text(body))) WHERE tsv IS NOT NULL;
