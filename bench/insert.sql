-- Autocommit INSERTs (bench/run's insert-prepared workload): each one its own transaction.
\set aid random(1, 100000 * :scale)
\set delta random(-5000, 5000)
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP);
