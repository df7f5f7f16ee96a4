/* ratelimit.h - kernel only, included by relay.c: GCRA buckets (docs/DATAPATH.md 5).
 *
 * A bucket is one __u64 "theoretical arrival time" (TAT). Deciding and charging are
 * separate so that the new-flow path can decide before the FIB lookup and charge only
 * once the packet is forwarded: a packet that is not forwarded leaves no trace.
 */
#ifndef ICEGATE_RATELIMIT_H
#define ICEGATE_RATELIMIT_H

#include "shared.h"

/* May a packet pass a bucket holding `tat`? On yes, *next is the bucket's new value.
 * interval_ns == 0 disables the limit (always yes, *next unchanged). */
static __always_inline int gcra_admit(__u64 tat, __u64 now, __u64 interval_ns, __u64 tolerance_ns,
				      __u64 *next)
{
	if (interval_ns == 0) {
		*next = tat;
		return 1;
	}
	if (tat < now)
		tat = now;
	if (tat - now > tolerance_ns)
		return 0;
	*next = tat + interval_ns;
	return 1;
}

#endif /* ICEGATE_RATELIMIT_H */
