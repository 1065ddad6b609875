/* How the kernels' loops are split between the threads of the OpenMP pool.

   Dynamic: a thread takes the next work item when it finishes one. On a node shared with
   other processes the kernel often has one of its threads descheduled; under a static
   split that thread's fixed share waits for it while the others idle at the barrier,
   under a dynamic one it holds back only the item it is on. Each item (a block of
   elements, a row, a fixed chunk of rows) is computed whole by one thread, so the results
   are the same bits under any schedule and thread count. Building with
   -DRAYREC_STATIC_SCHEDULE gives the former static split, which the tests compare with. */
#ifndef RAYREC_SCHEDULE_H
#define RAYREC_SCHEDULE_H
#include <stdint.h>

#ifdef RAYREC_STATIC_SCHEDULE
#define RAYREC_SCHEDULE(items) static
#else
#define RAYREC_SCHEDULE(items) dynamic, items
#endif

/* About 16k elements per item: large enough that taking one (an atomic increment) costs
   nothing beside it, small enough that a 2-thread kernel has many. */
#define ITEM_ELEMENTS 16384
static inline int64_t rows_per_item(int64_t columns) {
    return columns >= ITEM_ELEMENTS ? 1 : ITEM_ELEMENTS / (columns > 0 ? columns : 1);
}
#endif
