/* migrations: the numbered schema files of migrations/, embedded at build time
 * (cmake/embed_migrations.cmake generates the table). Read-only data. */
#ifndef PARLEY_MIGRATIONS_H
#define PARLEY_MIGRATIONS_H

struct migration {
    int version;       /* the NNN of NNN_name.sql */
    const char *name;  /* file name, for logs */
    const char *sql;   /* whole file, NUL-terminated */
};

extern const struct migration migrations[];
extern const int migrations_count;

#endif
