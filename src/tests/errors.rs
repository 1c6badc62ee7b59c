//! Errors a caller can cause, each with its message (SQLSTATEs are checked in tests/pg_regress
//! and tests/e2e/test_errors.py).

#[pgrx::pg_schema]
mod tests {
    use crate::tests::fixtures::setup_users;
    use pgrx::prelude::*;

    #[pg_test(error = "endpoint \"nope\" does not exist")]
    fn watch_refuses_an_unknown_endpoint() {
        setup_users();
        Spi::run("SELECT webhook.watch('users', 'nope')").unwrap();
    }

    #[pg_test(error = "endpoint \"ep\" already exists")]
    fn create_endpoint_refuses_a_duplicate_name() {
        setup_users();
        Spi::run("SELECT webhook.create_endpoint('ep', 'http://127.0.0.1:9/')").unwrap();
    }

    #[pg_test(error = "invalid URL \"ftp://x/\": only http:// and https:// URLs are accepted")]
    fn create_endpoint_refuses_a_non_http_url() {
        Spi::run("SELECT webhook.create_endpoint('e', 'ftp://x/')").unwrap();
    }

    #[pg_test(error = "unknown HTTP method \"FETCH\": accepted methods are POST, PUT, PATCH")]
    fn create_endpoint_refuses_an_unknown_method() {
        Spi::run("SELECT webhook.create_endpoint('e', 'http://x/', method => 'FETCH')").unwrap();
    }

    #[pg_test(error = "unknown event \"truncate\": accepted events are insert, update, delete")]
    fn watch_refuses_an_unknown_event() {
        setup_users();
        Spi::run("SELECT webhook.watch('users', 'ep', events => '{truncate}')").unwrap();
    }

    #[pg_test(error = "column \"nope\" named in columns does not exist in table public.users")]
    fn watch_refuses_an_unknown_column() {
        setup_users();
        Spi::run("SELECT webhook.watch('users', 'ep', columns => '{nope}')").unwrap();
    }

    #[pg_test(
        error = "table public.nokey has no primary key; pass lookup => ARRAY['column', ...] to name the columns that identify a row"
    )]
    fn watch_refuses_a_table_without_key_or_lookup() {
        setup_users();
        Spi::run("SELECT webhook.watch('nokey', 'ep')").unwrap();
    }

    #[pg_test(
        error = "trigger \"by_hand\" on public.users names endpoint \"ghost\", which does not exist"
    )]
    fn a_hand_made_trigger_naming_an_unknown_endpoint_fails_the_write() {
        setup_users();
        Spi::run(
            "CREATE TRIGGER by_hand AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION webhook.capture('ghost');
             INSERT INTO users VALUES (1, 'a@b.c', 'Ann', '{}');",
        )
        .unwrap();
    }
}
