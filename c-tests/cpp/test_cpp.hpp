// Shared by the two translation units of the C++ test: both include veloq.hpp (and so
// instantiate the same templates); a header that is not ODR-clean fails to link or misbehaves.
#ifndef VELOQ_TEST_CPP_HPP
#define VELOQ_TEST_CPP_HPP

#include <veloq.hpp>

#include "../check.h"

// Counts live instances of a callable: every box the wrapper makes must be destroyed.
struct Tracked {
    static int &live() {
        static int n = 0;
        return n;
    }
    Tracked() { __atomic_fetch_add(&live(), 1, __ATOMIC_SEQ_CST); }
    Tracked(const Tracked &) { __atomic_fetch_add(&live(), 1, __ATOMIC_SEQ_CST); }
    Tracked(Tracked &&) noexcept { __atomic_fetch_add(&live(), 1, __ATOMIC_SEQ_CST); }
    ~Tracked() { __atomic_fetch_sub(&live(), 1, __ATOMIC_SEQ_CST); }
    Tracked &operator=(const Tracked &) = default;
};

inline int tracked_live() { return __atomic_load_n(&Tracked::live(), __ATOMIC_SEQ_CST); }

// Defined in test_cpp_other.cpp, run from main() in test_cpp_main.cpp.
void run_other_tu_cases();
// The same function template instantiated in both units (compared in main).
std::int64_t spawn_plain_function_in_other_tu(veloq::Runtime &rt, veloq::CompletionQueue &cq);

inline std::int64_t plain_task() { return 1234; }

#endif
