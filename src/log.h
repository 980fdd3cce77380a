/* log: leveled, line-oriented logging to stderr.
 * The threshold is set once by main before any thread starts and is read-only
 * afterwards, like the rest of the configuration. */
#ifndef PARLEY_LOG_H
#define PARLEY_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* Parses "debug", "info", "warn", "error"; -1 if unknown. */
int log_level_parse(const char *s);
/* Called once, before threads start. */
void log_set_level(enum log_level level);
/* Lines as JSON objects {"ts","level","msg"} (--log-format json); before threads start. */
void log_set_json(int on);
int log_enabled(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
