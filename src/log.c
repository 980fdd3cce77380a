/* log: see log.h. One fprintf per line, so lines from threads do not interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Written once by main before threads start (see log.h); read-only after. */
static enum log_level threshold = LOG_INFO;
static int json_lines;

void log_set_json(int on)
{
    json_lines = on;
}

/* The message as a JSON string's content: quotes, backslashes and control
 * characters escaped (the rest, UTF-8 included, as it is). */
static void json_escape(char *out, size_t outlen, const char *in)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && o + 7 < outlen; p++) {
        if (*p == '"' || *p == '\\') {
            out[o++] = '\\';
            out[o++] = (char)*p;
        } else if (*p < 0x20) {
            o += (size_t)snprintf(out + o, outlen - o, "\\u%04x", *p);
        } else {
            out[o++] = (char)*p;
        }
    }
    out[o] = '\0';
}

int log_level_parse(const char *s)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

void log_set_level(enum log_level level)
{
    threshold = level;
}

int log_enabled(enum log_level level)
{
    return level >= threshold;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    static const char *tags[] = {"debug", "info", "warn", "error"};
    if (level < threshold)
        return;
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, tags[level]);
    va_list ap;
    va_start(ap, fmt);
    if (!json_lines) {
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
        fprintf(stderr, "%s\n", line);
        return;
    }
    char msg[1024], esc[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_escape(esc, sizeof esc, msg);
    line[n - (int)strlen(tags[level]) - 2] = '\0'; /* the timestamp alone */
    fprintf(stderr, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}\n", line, tags[level], esc);
}
