// The installed C++ wrapper, found through `pkg-config --cflags veloq` like veloq.h.
#include <veloq.hpp>

#include <cstdio>

int main() {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    veloq::CompletionQueue cq(rt, 8);
    for (std::uint64_t i = 0; i < 100; i++)
        rt.spawn_balanced([i] { return static_cast<std::int64_t>(i + 1); }, cq, i);
    std::int64_t sum = 0;
    std::size_t got = 0;
    while (got < 100) {
        auto batch = cq.wait(64, 1, std::chrono::seconds(10));
        if (batch.empty())
            break;
        for (const veloq_cqe &e : batch)
            sum += e.res;
        got += batch.size();
    }
    std::printf("consumer-cpp: %zu completions, sum %lld\n", got, static_cast<long long>(sum));
    return got == 100 && sum == 5050 ? 0 : 1;
}
