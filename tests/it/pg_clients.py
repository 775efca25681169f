"""Real PostgreSQL clients against `tagflow serve --pg-listen` (run by tests/it/pg.rs).

Usage: python pg_clients.py MODE; connection from PGHOST, PGPORT, PGUSER, PGPASSWORD.
Prints one JSON document on stdout.

- check: the rows a BI tool or a driver reads (simple and extended protocol), the
  introspection queries Metabase and Grafana send when they connect, and the SQLSTATE of
  each refusal, with a check after each that the session still answers.
- cursor: DECLARE a cursor, FETCH a few rows, print "fetched" and wait for a line on stdin
  (the test publishes a new version meanwhile), then FETCH the rest.
"""

import json
import os
import sys

import psycopg

# Sent by Metabase v0.55 and Grafana's PostgreSQL data source on connect and when browsing
# tables, as captured in datafusion-postgres' client tests (tests/metabase.rs, grafana.rs).
INTROSPECTION = [
    "SET extra_float_digits = 2",
    "SET application_name = 'Metabase v0.55.1'",
    "SHOW TRANSACTION ISOLATION LEVEL",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
    """SELECT nspname AS "TABLE_SCHEM", current_database() AS "TABLE_CATALOG" FROM pg_catalog.pg_namespace
       WHERE nspname <> 'pg_toast' AND (nspname !~ '^pg_temp_' OR nspname = (pg_catalog.current_schemas(true))[1])
       ORDER BY "TABLE_SCHEM\"""",
    """SELECT "n"."nspname" AS "schema", "c"."relname" AS "name",
              CASE "c"."relkind" WHEN 'r' THEN 'TABLE' WHEN 'v' THEN 'VIEW' ELSE NULL END AS "type"
       FROM "pg_catalog"."pg_class" AS "c" INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "c"."relnamespace" = "n"."oid"
       WHERE ("n"."nspname" !~ '^pg_') AND ("n"."nspname" <> 'information_schema') AND c.relkind in ('r', 'p', 'v', 'f', 'm')
       ORDER BY "type" ASC, "schema" ASC, "name" ASC""",
    "show timezone",
    """SELECT quote_ident(table_name) AS "table" FROM information_schema.tables
       WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog') ORDER BY 1""",
    """SELECT quote_ident(column_name) AS "column", data_type AS "type" FROM information_schema.columns
       WHERE quote_ident(table_name) = 'customer_tags' ORDER BY 1""",
]

# Each refusal and the SQLSTATE PostgreSQL gives it.
REFUSALS = [
    ("INSERT INTO customer_tags VALUES ('x', 'f', 't', 'v', 1.0, now())", "25006"),
    ("DELETE FROM customer_tags", "25006"),
    ("CREATE TABLE t (a int)", "25006"),
    ("DROP TABLE customer_tags", "25006"),
    ("SELECT * INTO copy FROM customer_tags", "25006"),
    ("SET datafusion.execution.target_partitions = 1", "42501"),
    ("SELECT * FROM '/etc/passwd'", "42P01"),
    ("SELECT pg_read_file('/etc/passwd')", "42883"),
    ("SELECT nonsense FROM customer_tags", "42703"),
    ("SELEC 1", "42601"),
    # Past the memory limit (the test's config sets a small one).
    ("SELECT * FROM customer_tags a CROSS JOIN customer_tags b ORDER BY a.value, b.value, a.customer_id", "53200"),
]

# Past the time limit (the test's config sets serve.query_timeout = 1s).
SLOW = ("SELECT sum(length(a.customer_id || b.tag || c.value)) "
        "FROM customer_tags a CROSS JOIN customer_tags b CROSS JOIN customer_tags c")


def connect(**kw):
    return psycopg.connect(autocommit=True, **kw)


def check():
    out = {}
    with connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT tag, count(*) AS n FROM customer_tags GROUP BY tag ORDER BY tag")
        out["counts"] = [[t, int(n)] for t, n in cur.fetchall()]
        # The extended protocol with bound parameters, prepared server-side.
        ids = json.loads(os.environ["TAGFLOW_TEST_IDS"])
        out["customers"] = {}
        for customer in ids:
            cur.execute(
                "SELECT tag, value FROM customer_tags WHERE customer_id = %s ORDER BY tag",
                (customer,),
                prepare=True,
            )
            out["customers"][customer] = [[t, v] for t, v in cur.fetchall()]
        cur.execute("SELECT version, tag, value, size, inflow, outflow FROM segments ORDER BY version, tag, value")
        out["segments"] = [[int(v), t, val, int(s), int(i), int(o)] for v, t, val, s, i, o in cur.fetchall()]
        cur.execute("SELECT count(*) FROM job_runs")
        out["job_runs"] = int(cur.fetchone()[0])
        cur.execute("SELECT max(to_version) FROM tag_changes")
        out["feed_max_version"] = int(cur.fetchone()[0])
        out["introspection"] = []
        for sql in INTROSPECTION:
            try:
                cur.execute(sql)
                if cur.description is not None:
                    cur.fetchall()
                out["introspection"].append([sql, "ok"])
            except psycopg.Error as e:
                out["introspection"].append([sql, f"{e.sqlstate}: {e}"])
        out["refusals"] = []
        for sql, expected in REFUSALS + [(SLOW, "57014")]:
            try:
                cur.execute(sql)
                cur.fetchall()
                got = "no error"
            except psycopg.Error as e:
                got = e.sqlstate
            cur.execute("SELECT 1")
            out["refusals"].append([sql, expected, got, cur.fetchone()[0] == 1])
    try:
        connect(password="not the password").close()
        out["wrong_password"] = "connected"
    except psycopg.OperationalError as e:
        out["wrong_password"] = str(e)
    try:
        connect(user="nobody").close()
        out["wrong_user"] = "connected"
    except psycopg.OperationalError as e:
        out["wrong_user"] = str(e)
    return out


def cursor():
    with psycopg.connect() as conn:  # a transaction: the cursor lives until it ends
        cur = conn.cursor()
        cur.execute("DECLARE tags CURSOR FOR SELECT customer_id, tag, value FROM customer_tags")
        cur.execute("FETCH 5 FROM tags")
        rows = [list(r) for r in cur.fetchall()]
        print("fetched", flush=True)
        sys.stdin.readline()
        cur.execute("FETCH ALL FROM tags")
        rows += [list(r) for r in cur.fetchall()]
        return {"rows": rows}


if __name__ == "__main__":
    print(json.dumps({"check": check, "cursor": cursor}[sys.argv[1]]()), flush=True)
