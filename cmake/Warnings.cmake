# Warnings are errors in every target of this project (not in third-party headers,
# which are included as system headers).
function(grantvault_target_defaults target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wpedantic -Werror
    -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align -Wunused
    -Woverloaded-virtual -Wconversion -Wsign-conversion
    -Wdouble-promotion -Wformat=2 -Wimplicit-fallthrough)
  if(NOT GRANTVAULT_SANITIZE)
    target_compile_definitions(${target} PRIVATE $<$<NOT:$<CONFIG:Debug>>:_FORTIFY_SOURCE=2>)
  endif()
  target_include_directories(${target} PUBLIC ${GRANTVAULT_INCLUDE_ROOT})
endfunction()

# A module library: grantvault_module(name SOURCES ... DEPS ...)
function(grantvault_module name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(gv_${name} STATIC ${ARG_SOURCES})
  grantvault_target_defaults(gv_${name})
  target_link_libraries(gv_${name} PUBLIC ${ARG_DEPS})
endfunction()
