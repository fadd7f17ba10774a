# What `cmake --install` lays down (GNUInstallDirs; docs/operations.md, "Installing"):
#
#   sbin/grantvaultd                        the daemon (the unit's ExecStart=)
#   bin/grantvault                          the admin CLI
#   share/grantvault/connectors.toml        the connector catalog the daemon reads by default
#   lib/systemd/system/*.service, *.socket  the units, naming this prefix's daemon
#   lib/sysusers.d/grantvault.conf          user grantvault, groups grantvault-agents/-admins
#   lib/tmpfiles.d/grantvault.conf          /etc/grantvault
#   share/doc/grantvault/                   README, docs, grantvaultd.toml.example
#
# Nothing is written to /etc or /var: the example configuration stays an example, the state
# directory is the unit's StateDirectory=.

# The systemd directories, relative to the prefix: systemd.pc's, with its prefix (or its empty
# root prefix on split-/usr layouts) taken off, so that `--prefix /usr` gives systemd's own
# directories and any other prefix (and DESTDIR) stays inside itself. systemd reads units,
# sysusers.d and tmpfiles.d from /usr/local/lib too.
function(grantvault_systemd_dir out variable fallback)
  set(dir "${fallback}")
  if(PKG_CONFIG_FOUND)
    pkg_get_variable(pc_dir systemd ${variable})
    pkg_get_variable(pc_prefix systemd prefix)
    if(pc_dir MATCHES "^${pc_prefix}/(.+)$")
      set(dir "${CMAKE_MATCH_1}")
    elseif(pc_dir MATCHES "^/(.+)$")
      set(dir "${CMAKE_MATCH_1}")
    endif()
  endif()
  set(GRANTVAULT_${out} "${dir}" CACHE STRING "where ${variable} files go, relative to the prefix")
endfunction()
grantvault_systemd_dir(SYSTEMD_UNIT_DIR systemdsystemunitdir lib/systemd/system)
grantvault_systemd_dir(SYSUSERS_DIR sysusersdir lib/sysusers.d)
grantvault_systemd_dir(TMPFILES_DIR tmpfilesdir lib/tmpfiles.d)

install(TARGETS grantvaultd RUNTIME DESTINATION ${CMAKE_INSTALL_SBINDIR})
install(TARGETS grantvault RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES oauth/connectors.toml DESTINATION ${CMAKE_INSTALL_DATADIR}/grantvault)

# grantvaultd.service names the daemon and the docs by their installed paths. The build tree
# gets one for the configured prefix (tests/integration/systemd_test.cc checks it); the install
# writes another from the prefix given to `cmake --install --prefix`, which may differ.
set(GRANTVAULT_UNIT_TEMPLATE "${PROJECT_SOURCE_DIR}/systemd/grantvaultd.service.in")
set(GRANTVAULT_SBINDIR "${CMAKE_INSTALL_FULL_SBINDIR}")
set(GRANTVAULT_DOCDIR "${CMAKE_INSTALL_FULL_DOCDIR}")
configure_file(${GRANTVAULT_UNIT_TEMPLATE} ${PROJECT_BINARY_DIR}/systemd/grantvaultd.service
               @ONLY)
foreach(file grantvault-agent.socket grantvault-admin.socket grantvault.sysusers.conf
             grantvault.tmpfiles.conf)
  configure_file(systemd/${file} ${PROJECT_BINARY_DIR}/systemd/${file} COPYONLY)
endforeach()

install(CODE "
  set(GRANTVAULT_UNIT_TEMPLATE \"${GRANTVAULT_UNIT_TEMPLATE}\")
  set(GRANTVAULT_UNIT_WORK_DIR \"${PROJECT_BINARY_DIR}/systemd/install\")
  set(GRANTVAULT_UNIT_DIR \"${GRANTVAULT_SYSTEMD_UNIT_DIR}\")
  set(GRANTVAULT_REL_SBINDIR \"${CMAKE_INSTALL_SBINDIR}\")
  set(GRANTVAULT_REL_DOCDIR \"${CMAKE_INSTALL_DOCDIR}\")
  include(\"${PROJECT_SOURCE_DIR}/cmake/InstallUnit.cmake\")
")
install(FILES systemd/grantvault-agent.socket systemd/grantvault-admin.socket
        DESTINATION ${GRANTVAULT_SYSTEMD_UNIT_DIR})
install(FILES systemd/grantvault.sysusers.conf DESTINATION ${GRANTVAULT_SYSUSERS_DIR}
        RENAME grantvault.conf)
install(FILES systemd/grantvault.tmpfiles.conf DESTINATION ${GRANTVAULT_TMPFILES_DIR}
        RENAME grantvault.conf)

install(FILES README.md systemd/grantvaultd.toml.example DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR} FILES_MATCHING PATTERN "*.md")
