package org.apache.flink.metrics.prometheus;

import io.prometheus.client.exporter.HTTPServer;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.util.Iterator;

/**
 * Flink's PrometheusReporter, but its HTTP endpoint binds to one host (127.0.0.1 for the local stack).
 *
 * <p>The stock reporter binds to the wildcard address with no option to change it; the stack must listen on
 * loopback only. Lives in Flink's package to reach the package-private registry of AbstractPrometheusReporter
 * (both jars sit in the same plugin folder, so they share one plugin class loader).
 */
public class LoopbackPrometheusReporter extends AbstractPrometheusReporter {
    private final HTTPServer httpServer;
    private final int port;

    LoopbackPrometheusReporter(String host, Iterator<Integer> ports) {
        HTTPServer server = null;
        int bound = -1;
        while (ports.hasNext() && server == null) {
            int candidate = ports.next();
            try {
                server = new HTTPServer(new InetSocketAddress(host, candidate), registry);
                bound = candidate;
                log.info("Started LoopbackPrometheusReporter HTTP server on {}:{}.", host, candidate);
            } catch (IOException e) {
                log.debug("Could not start LoopbackPrometheusReporter HTTP server on {}:{}.", host, candidate, e);
            }
        }
        if (server == null) {
            throw new RuntimeException("Could not start LoopbackPrometheusReporter on " + host + " on any configured port");
        }
        this.httpServer = server;
        this.port = bound;
    }

    int getPort() {
        return port;
    }

    @Override
    public void close() {
        httpServer.stop();
        super.close();
    }
}
