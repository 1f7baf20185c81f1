package stack;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;

/**
 * Smoke job for the local Flink cluster: a throttled bounded sequence, keyed counting in (RocksDB) state,
 * checkpoints every second, so a short run exercises state, checkpoints and per-operator metrics.
 *
 * <p>Arguments: records (default 4000), pause in milliseconds per record and subtask (default 4).
 */
public class SmokeJob {
    public static void main(String[] args) throws Exception {
        long records = args.length > 0 ? Long.parseLong(args[0]) : 4000L;
        long pauseMs = args.length > 1 ? Long.parseLong(args[1]) : 4L;
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.enableCheckpointing(1000L);
        env.fromSequence(1L, records)
                .name("sequence")
                .uid("sequence")
                .map(new Throttle(pauseMs))
                .name("throttle")
                .uid("throttle")
                .keyBy(new ByMod())
                .map(new CountPerKey())
                .name("count-per-key")
                .uid("count-per-key")
                .sinkTo(new DiscardingSink<>())
                .name("discard")
                .uid("discard");
        env.execute("stack-smoke-job");
    }

    /** Slows the stream down so the job lives long enough for checkpoints and metric scrapes. */
    public static final class Throttle implements MapFunction<Long, Long> {
        private final long pauseMs;

        Throttle(long pauseMs) {
            this.pauseMs = pauseMs;
        }

        @Override
        public Long map(Long value) throws Exception {
            if (pauseMs > 0) {
                Thread.sleep(pauseMs);
            }
            return value;
        }
    }

    /** Sixteen keys, so keyed state is spread over both subtasks. */
    public static final class ByMod implements KeySelector<Long, Long> {
        @Override
        public Long getKey(Long value) {
            return value % 16L;
        }
    }

    /** Counts records per key in keyed value state (held by the configured state backend). */
    public static final class CountPerKey extends RichMapFunction<Long, Long> {
        private transient ValueState<Long> count;

        @Override
        public void open(Configuration parameters) {
            count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Long.class));
        }

        @Override
        public Long map(Long value) throws Exception {
            Long current = count.value();
            long next = (current == null ? 0L : current) + 1L;
            count.update(next);
            return next;
        }
    }
}
