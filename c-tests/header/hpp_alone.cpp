// veloq.hpp compiles on its own (it includes veloq.h itself) as C++17 and C++20.
#include <veloq.hpp>
#include <veloq.hpp>

using veloq_hpp_alone_runtime = veloq::Runtime;
