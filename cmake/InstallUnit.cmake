# Run by `cmake --install` (cmake/Install.cmake): installs grantvaultd.service written for the
# prefix of this install, which is CMAKE_INSTALL_PREFIX here (--prefix wins over the configured
# one). Each prefix (and DESTDIR) gets its own work file, so installs may run side by side.
foreach(kind SBINDIR DOCDIR)
  set(dir "${GRANTVAULT_REL_${kind}}")
  if(NOT IS_ABSOLUTE "${dir}")
    set(dir "${CMAKE_INSTALL_PREFIX}/${dir}")
  endif()
  set(GRANTVAULT_${kind} "${dir}")
endforeach()
string(MD5 work "$ENV{DESTDIR}|${CMAKE_INSTALL_PREFIX}")
set(unit "${GRANTVAULT_UNIT_WORK_DIR}/${work}/grantvaultd.service")
configure_file("${GRANTVAULT_UNIT_TEMPLATE}" "${unit}" @ONLY)
set(destination "${GRANTVAULT_UNIT_DIR}")
if(NOT IS_ABSOLUTE "${destination}")
  set(destination "${CMAKE_INSTALL_PREFIX}/${destination}")
endif()
file(INSTALL DESTINATION "${destination}" TYPE FILE FILES "${unit}")
