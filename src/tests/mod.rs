//! In-database tests (`cargo pgrx test`): the SQL functions and the capture trigger inside a
//! real PostgreSQL, each test in a transaction that is rolled back (so no worker ever sees
//! these rows: delivery is tested end to end in tests/e2e). Named after what they prove.

mod capture;
mod errors;

/// Tables and an endpoint the tests share, and readers of what they queued.
mod fixtures {
    use pgrx::prelude::*;
    use serde_json::Value;

    pub fn setup_users() {
        Spi::run(
            "CREATE TABLE users (user_id int PRIMARY KEY, email text, first_name text, hidden text[]);
             CREATE TABLE nokey (a int, b text);",
        )
        .unwrap();
        Spi::get_one::<String>("SELECT webhook.create_endpoint('ep', 'http://127.0.0.1:9/hook')")
            .unwrap();
    }

    pub fn payloads() -> Vec<Value> {
        Spi::connect(|c| {
            c.select(
                "SELECT payload FROM webhook.delivery ORDER BY id",
                None,
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|r| serde_json::from_str(&r.get::<String>(1).unwrap().unwrap()).unwrap())
            .collect()
        })
    }

    pub fn strip_meta_extras(mut v: Value) -> Value {
        let meta = v["meta"].as_object_mut().unwrap();
        let id = meta.remove("id").unwrap();
        let id = id.as_str().unwrap();
        assert!(id.starts_with("msg_") && id.len() == 26, "{id}");
        assert!(meta
            .remove("occurred_at")
            .unwrap()
            .as_str()
            .unwrap()
            .ends_with('Z'));
        assert_eq!(meta.remove("table").unwrap(), "public.users");
        v
    }
}
