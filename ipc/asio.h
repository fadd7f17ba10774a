// The one way grantvault includes Boost.Asio: Boost 1.74's awaitable.hpp uses
// std::exchange without including <utility>, which breaks under -std=c++20
// with GCC 12, so <utility> must come first.
#ifndef GRANTVAULT_IPC_ASIO_H_
#define GRANTVAULT_IPC_ASIO_H_

// clang-format off
#include <utility>
#include <boost/asio.hpp>
// clang-format on

#endif  // GRANTVAULT_IPC_ASIO_H_
