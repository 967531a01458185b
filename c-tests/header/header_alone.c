/* veloq.h compiles on its own, twice included (the guard), as C99/C11 and C++11/C++17,
 * with -Wall -Wextra -Werror -pedantic: nothing else may be needed before it. */
#include <veloq.h>
#include <veloq.h>

/* Use the declarations a little so the translation unit is not empty. */
typedef veloq_cqe veloq_header_alone_cqe;
typedef veloq_task_fn veloq_header_alone_fn;
