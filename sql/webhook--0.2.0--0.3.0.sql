\echo Use "ALTER EXTENSION webhook UPDATE TO '0.3.0'" to load this file. \quit
-- webhook 0.2.0 -> 0.3.0. A fresh install of 0.3.0 (sql/schema.sql, sql/finalize.sql) gives the
-- same schema; tests/e2e/test_upgrade.py compares the two.
