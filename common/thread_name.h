// Names the calling thread as `top -H`, `perf report --sort comm` and core
// dumps show it. Linux keeps 15 bytes of a name; longer ones are cut.
#ifndef GRANTVAULT_COMMON_THREAD_NAME_H_
#define GRANTVAULT_COMMON_THREAD_NAME_H_

#include <pthread.h>

#include <string>
#include <string_view>

namespace grantvault {

inline void NameThisThread(std::string_view name) {
  const std::string cut(name.substr(0, 15));
  (void)::pthread_setname_np(::pthread_self(), cut.c_str());
}

}  // namespace grantvault

#endif  // GRANTVAULT_COMMON_THREAD_NAME_H_
