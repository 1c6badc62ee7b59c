//! What the capture trigger queues: payload shapes, event and column choice, value types.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::fixtures::{payloads, setup_users, strip_meta_extras};
    use pgrx::prelude::*;
    use serde_json::{json, Value};

    #[pg_test]
    fn insert_update_visibility_update_and_delete_are_queued_as_rownd_payloads() {
        setup_users();
        Spi::run(
            "SELECT webhook.watch('users', 'ep', rename => '{\"email\": \"mail\"}', redact => '{first_name}',
                                  visibility_column => 'hidden');
             INSERT INTO users VALUES (1, 'a@b.c', 'Ann', '{}');
             UPDATE users SET hidden = '{mail}' WHERE user_id = 1;
             UPDATE users SET email = 'n@b.c' WHERE user_id = 1;
             DELETE FROM users;",
        )
        .unwrap();
        let got: Vec<Value> = payloads().into_iter().map(strip_meta_extras).collect();
        let lookup = json!([{"field": "user_id", "value": 1}]);
        assert_eq!(
            got,
            vec![
                json!({"data": {"user_id": 1, "mail": "a@b.c", "first_name": "<<REDACTED>>"},
                       "redacted": ["first_name"],
                       "meta": {"operation": "data_insert", "lookup_values": lookup}}),
                json!({"data": {"user_id": 1, "mail": "<<REDACTED>>", "first_name": "<<REDACTED>>"},
                       "redacted": ["mail", "first_name"],
                       "meta": {"operation": "visibility_update", "lookup_values": lookup,
                                "changed_fields": ["mail"]}}),
                json!({"data": {"user_id": 1, "mail": "<<REDACTED>>", "first_name": "<<REDACTED>>"},
                       "redacted": ["mail", "first_name"],
                       "meta": {"operation": "data_update", "lookup_values": lookup,
                                "changed_fields": ["mail"]}}),
                json!({"data": {"user_id": 1}, "meta": {"operation": "delete", "lookup_values": lookup}}),
            ]
        );
    }

    #[pg_test]
    fn a_rownd_change_carries_its_message_id_a_census_change_waits_for_its_message() {
        setup_users();
        Spi::run(
            "SELECT webhook.create_endpoint('census', 'http://127.0.0.1:9/c', format => 'census');
             SELECT webhook.watch('users', 'ep');
             SELECT webhook.watch('users', 'census');
             INSERT INTO users SELECT g, 'a@b.c', 'Ann', '{}' FROM generate_series(1, 3) g;",
        )
        .unwrap();
        let rownd: Vec<(String, String)> = Spi::connect(|c| {
            c.select(
                "SELECT d.message_id, d.payload::jsonb #>> '{meta,id}' FROM webhook.delivery d
                 JOIN webhook.endpoint e ON e.id = d.endpoint_id WHERE e.name = 'ep' ORDER BY d.id",
                None,
                &[],
            )
            .unwrap()
            .map(|r| (r.get(1).unwrap().unwrap(), r.get(2).unwrap().unwrap()))
            .collect()
        });
        assert_eq!(rownd.len(), 3);
        for (column, meta) in &rownd {
            assert_eq!(column, meta);
            assert!(column.starts_with("msg_"), "{column}");
        }
        assert!(rownd[0].0 != rownd[1].0 && rownd[1].0 != rownd[2].0);
        let census_ids = Spi::get_one::<i64>(
            "SELECT count(*) FROM webhook.delivery d JOIN webhook.endpoint e ON e.id = d.endpoint_id
             WHERE e.name = 'census' AND d.message_id IS NULL AND d.status = 'pending'",
        )
        .unwrap();
        assert_eq!(census_ids, Some(3));
    }

    #[pg_test]
    fn events_and_columns_choose_what_is_queued() {
        setup_users();
        Spi::run(
            "SELECT webhook.watch('users', 'ep', events => '{delete}', columns => '{email}');
             INSERT INTO users VALUES (1, 'a@b.c', 'Ann', '{}');
             DELETE FROM users;",
        )
        .unwrap();
        let got = payloads();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["meta"]["operation"], "delete");
        assert_eq!(got[0]["data"], json!({"user_id": 1}));
    }

    #[pg_test]
    fn values_are_sent_as_to_jsonb_writes_them() {
        Spi::run(
            "CREATE TABLE t (id int PRIMARY KEY, n numeric, ts timestamptz, j jsonb, arr int[], b bytea, nothing text);
             SELECT webhook.create_endpoint('ep', 'http://127.0.0.1:9/');
             SELECT webhook.watch('t', 'ep');
             INSERT INTO t VALUES (1, 12345678901234567890.123456789, '2021-08-31 23:03:29+00',
                                   '{\"a\": [1, \"x\"]}', '{1,2}', '\\x0102', NULL);",
        )
        .unwrap();
        let body = Spi::get_one::<String>("SELECT payload FROM webhook.delivery")
            .unwrap()
            .unwrap();
        assert!(body.contains("12345678901234567890.123456789"), "{body}");
        let expected: Value = serde_json::from_str(
            &Spi::get_one::<String>("SELECT to_jsonb(t)::text FROM t")
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        let got: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(got["data"], expected);
    }

    #[pg_test]
    fn census_endpoints_get_the_census_envelope() {
        setup_users();
        Spi::run(
            "SELECT webhook.create_endpoint('cen', 'http://127.0.0.1:9/', format => 'census');
             SELECT webhook.watch('users', 'cen', name => 'active users', columns => '{email}');
             INSERT INTO users VALUES (1, 'a@b.c', 'Ann', '{}');",
        )
        .unwrap();
        let got = &payloads()[0];
        assert_eq!(got["operation"], "changed");
        assert_eq!(got["connection_name"], "cen");
        assert_eq!(got["model_name"], "active users");
        assert_eq!(got["data"], json!([{"email": "a@b.c"}]));
    }

    #[pg_test]
    fn unwatch_of_the_last_subscription_removes_the_trigger() {
        setup_users();
        Spi::run("SELECT webhook.watch('users', 'ep'); SELECT webhook.unwatch('users', 'ep');")
            .unwrap();
        let triggers =
            Spi::get_one::<i64>("SELECT count(*) FROM pg_trigger WHERE tgname = 'webhook_capture'");
        assert_eq!(triggers, Ok(Some(0)));
    }
}
