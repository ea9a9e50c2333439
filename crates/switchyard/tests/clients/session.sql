-- A psql session through Switchyard, run with `psql -X -v ON_ERROR_STOP=0` from a scratch
-- directory (for the \copy files). Its stdout must equal session.expected; errors and notices go to
-- stderr. Every step must behave as it does directly against PostgreSQL.

-- A transaction with writes and a read of them.
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL);
BEGIN;
INSERT INTO items VALUES (1, 'apple', 3), (2, 'pear', 5);
SELECT id, name, qty FROM items ORDER BY id;
COMMIT;

-- psql variables, interpolated as literals and as SQL text.
\set n 7
\set label 'plum'
INSERT INTO items VALUES (:n, :'label', :n * 2);
SELECT name, qty FROM items WHERE id = :n;

-- \copy out to a file in the working directory, and back in to another table.
\copy items TO 'items.csv' WITH (FORMAT csv)
CREATE TABLE items_copy (LIKE items);
\copy items_copy FROM 'items.csv' WITH (FORMAT csv)
SELECT count(*) AS copied, sum(qty) AS total FROM items_copy;

-- \copy from inline data (psql's "stdin" is this script) and to stdout.
\copy items_copy FROM stdin
10	fig	1
11	kiwi	2
\.
\copy (SELECT id, name FROM items_copy WHERE id >= 10 ORDER BY id) TO stdout

-- Errors in autocommit statements: the script goes on.
SELECT 1/0 AS boom;
INSERT INTO items VALUES (1, 'duplicate', 0);
SELECT 'still running' AS status;

-- An error inside a transaction aborts it until ROLLBACK.
BEGIN;
INSERT INTO items VALUES (20, 'lost', 1);
SELECT no_such_column FROM items;
SELECT 'ignored' AS in_aborted_transaction;
ROLLBACK;
SELECT count(*) AS rolled_back_rows FROM items WHERE id = 20;

-- A NOTICE from a DO block (psql prints it on stderr).
DO $$ BEGIN RAISE NOTICE 'notice from a DO block: %', 6 * 7; END $$;

-- \gset stores the columns of one row in variables.
SELECT count(*) AS item_count, max(qty) AS max_qty FROM items \gset
\echo item_count=:item_count max_qty=:max_qty
SELECT :item_count + :max_qty AS sum_of_variables;

-- An SQL-level prepared statement used inside one transaction.
BEGIN;
PREPARE item_by_id(int) AS SELECT name, qty FROM items WHERE id = $1;
EXECUTE item_by_id(2);
EXECUTE item_by_id(:n);
DEALLOCATE item_by_id;
COMMIT;

-- The session is still healthy at the end.
SELECT current_user, count(*) AS items FROM items;
\echo done
