/* config: the read-only configuration, from flags and PARLEY_* environment
 * variables (a flag wins over its variable). Loaded once by main; every thread
 * reads it, nobody writes it afterwards. */
#ifndef PARLEY_CONFIG_H
#define PARLEY_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CONFIG_SECRET_MAX 256

struct config {
    char listen_host[256];
    int listen_port;
    char metrics_host[256];  /* PARLEY_METRICS_LISTEN: /metrics on its own address; "" = the main one */
    int metrics_port;
    char data_dir[1024];
    char web_dir[1024];
    int workers;
    uint8_t jwt_secret[CONFIG_SECRET_MAX];
    size_t jwt_secret_len;
    int64_t access_ttl_s;
    int64_t refresh_ttl_s;
    int64_t batch_max;
    int64_t batch_interval_ms;
    int64_t batch_gap_us;
    int64_t send_rate;       /* messages per second per user; 0 = no limit */
    int64_t send_burst;      /* bucket size; 0 = no limit */
    int64_t max_body;        /* message body bytes after JSON decoding */
    int64_t max_frame;       /* WebSocket message bytes; larger closes 1009 */
    int64_t max_http_body;   /* HTTP request body bytes; larger answers 413 */
    int64_t max_upload;      /* attachment upload bytes (streamed to disk); larger answers 413 */
    int64_t max_pending_uploads; /* bytes of one user's uploads not yet attached (0: no cap); more answers 413 */
    int64_t heartbeat_ms;
    int64_t auth_timeout_ms;
    int64_t header_timeout_ms;
    int64_t max_conns;       /* per process */
    int64_t max_outq;        /* bytes queued to one connection before 1008 */
    int64_t max_group;       /* members per group */
    int64_t max_hashes;      /* concurrent password hashes per process */
    /* hardening (docs/SECURITY.md) */
    int64_t outq_low;        /* above: a connection's input is not read (backpressure) */
    int64_t conns_per_addr;  /* open connections per source address; 0 = no limit */
    int64_t signups_per_min; /* per source address; 0 = no limit */
    int64_t convs_per_min;   /* conversations created per minute per source address; 0 = no limit */
    int64_t login_fails;     /* failed logins per account before backoff (x4 per address); 0 = none */
    int64_t hash_queue;      /* password hashes waiting for a slot */
    int64_t hash_wait_ms;    /* longest wait for a slot */
    int64_t read_rate;       /* read frames per second per user; 0 = no limit */
    int64_t read_burst;
    int64_t typing_ms;       /* typing fan-out interval per user and conversation; 0 = none */
    int64_t writer_queue;    /* jobs waiting for the writer */
    int64_t read_threads;    /* reader threads: every read (PostgreSQL, at least 1) or searches (SQLite; 0: inline) */
    int64_t read_queue;      /* reads waiting for a reader thread; more answer 503 (0: no bound) */
    int log_level;           /* enum log_level */
    char log_format[8];      /* "text" or "json" */
    int64_t drain_delay_s;   /* SIGTERM: keep serving (not ready) this long first */
    int64_t drain_seconds;   /* then close the WebSockets with 1001 spread over this long */
    char redis_url[512];
    char db_url[512];
    char db_replica_url[512];
};

/* Fills cfg from defaults, then environment, then argv. On error returns -1
 * with one line in err. Returns 1 when --help or --version was handled
 * (text printed to stdout). The JWT secret is not loaded here: see
 * config_load_secret, which needs the data directory to exist. */
int config_load(struct config *cfg, int argc, char **argv, char *err, size_t errlen);

/* Takes PARLEY_JWT_SECRET if set (already in cfg), else reads
 * <data>/jwt.secret, else generates 32 random bytes into it with mode 0600.
 * Creates the data directory if missing. 0 or -1 with err. */
int config_load_secret(struct config *cfg, char *err, size_t errlen);

/* Prints the option table (flag, variable, default, meaning) to stdout. */
void config_print_help(void);

#endif
