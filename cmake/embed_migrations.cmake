# Turns migrations/NNN_name.sql into a C array so parleyd stays one binary.
# Called with -DDIR=<migrations dir> -DOUT=<generated .c>; optionally
# -DPREFIX=<symbol prefix> (default "migrations": the arrays migrations[] and
# migrations_count of migrations.h) and -DHEADER=<header to include> (default
# migrations.h). The PostgreSQL schema (migrations_pg/) is embedded with
# -DPREFIX=migrations_pg -DHEADER=migrations_pg.h.
if(NOT DEFINED PREFIX)
  set(PREFIX migrations)
endif()
if(NOT DEFINED HEADER)
  set(HEADER migrations.h)
endif()
file(GLOB files "${DIR}/*.sql")
list(SORT files)
set(body "/* generated from ${DIR} by cmake/embed_migrations.cmake */\n#include \"${HEADER}\"\n")
set(table "")
set(i 0)
foreach(f ${files})
  get_filename_component(name ${f} NAME)
  string(REGEX MATCH "^[0-9]+" num ${name})
  math(EXPR version "${num}")
  file(READ ${f} hex HEX)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
  string(APPEND body "static const char m${i}[] = {${hex}0};\n")
  string(APPEND table "  {${version}, \"${name}\", m${i}},\n")
  math(EXPR i "${i} + 1")
endforeach()
string(APPEND body "const struct migration ${PREFIX}[] = {\n${table}};\nconst int ${PREFIX}_count = ${i};\n")
file(WRITE ${OUT}.tmp "${body}")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different ${OUT}.tmp ${OUT})
