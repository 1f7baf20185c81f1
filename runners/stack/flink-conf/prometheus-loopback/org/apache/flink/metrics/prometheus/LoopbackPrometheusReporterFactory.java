package org.apache.flink.metrics.prometheus;

import org.apache.flink.metrics.MetricConfig;
import org.apache.flink.metrics.reporter.MetricReporter;
import org.apache.flink.metrics.reporter.MetricReporterFactory;
import org.apache.flink.util.NetUtils;

import java.util.Properties;

/** Factory for {@link LoopbackPrometheusReporter}: options {@code host} (default 127.0.0.1) and {@code port} (range). */
public class LoopbackPrometheusReporterFactory implements MetricReporterFactory {
    @Override
    public MetricReporter createMetricReporter(Properties properties) {
        MetricConfig config = (MetricConfig) properties;
        String host = config.getString("host", "127.0.0.1");
        String ports = config.getString("port", "9249");
        return new LoopbackPrometheusReporter(host, NetUtils.getPortRangeFromString(ports));
    }
}
