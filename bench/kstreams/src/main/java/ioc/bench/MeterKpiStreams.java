package ioc.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.lang.management.ManagementFactory;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.Locale;
import java.util.Properties;
import java.util.TreeMap;
import java.util.UUID;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StoreQueryParameters;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KGroupedStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.Windowed;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.QueryableStoreTypes;
import org.apache.kafka.streams.state.ReadOnlyWindowStore;
import org.apache.kafka.streams.state.WindowStore;

/**
 * The meter aggregation in Kafka Streams, written as its documentation teaches: every import-energy reading is
 * grouped by district (one repartition topic) and summed into 15-minute and daily tumbling windows by event
 * time (the interval's start, grace one day), with the reading count and the energy. A peer of IOC's meter KPI
 * processor in the bench (bench/kstreams_peer.py).
 *
 * <p>Args: BOOTSTRAP TOPIC STATE_DIR GUARANTEE(at_least_once|exactly_once_v2) IDLE_SECONDS. Prints one line
 * {@code RESULT {json}}: events read, wall and CPU seconds of this JVM from the first record read to the last
 * window update, and the final 15-minute windows (district|window start ms → [readings, kWh]) read back from
 * the window store, so the bench can check the totals against IOC's.
 */
public final class MeterKpiStreams {
  static final String ENERGY_IMPORT = "1-0:1.8.0";
  static final ObjectMapper JSON = new ObjectMapper();
  static final AtomicLong READ = new AtomicLong();
  static final AtomicLong UPDATES = new AtomicLong();
  static volatile long t0Nanos, c0Nanos, t1Nanos, c1Nanos, lastUpdateNanos;

  /** Window aggregate: readings and kWh, 16 bytes on the wire. */
  record Agg(long readings, double kwh) {}

  static final Serde<Agg> AGG_SERDE =
      Serdes.serdeFrom(
          (topic, a) -> ByteBuffer.allocate(16).putLong(a.readings()).putDouble(a.kwh()).array(),
          (topic, b) -> {
            ByteBuffer buf = ByteBuffer.wrap(b);
            return new Agg(buf.getLong(), buf.getDouble());
          });

  /** Parsed reading: what the aggregation needs. */
  record Reading(String district, String obis, long startMs, double delta) {}

  static final Serde<Reading> READING_SERDE =
      Serdes.serdeFrom(
          (topic, r) -> {
            byte[] d = r.district().getBytes(java.nio.charset.StandardCharsets.UTF_8);
            byte[] o = r.obis().getBytes(java.nio.charset.StandardCharsets.UTF_8);
            return ByteBuffer.allocate(24 + d.length + o.length)
                .putInt(d.length).put(d).putInt(o.length).put(o).putLong(r.startMs()).putDouble(r.delta())
                .array();
          },
          (topic, b) -> {
            ByteBuffer buf = ByteBuffer.wrap(b);
            byte[] d = new byte[buf.getInt()];
            buf.get(d);
            byte[] o = new byte[buf.getInt()];
            buf.get(o);
            return new Reading(
                new String(d, java.nio.charset.StandardCharsets.UTF_8),
                new String(o, java.nio.charset.StandardCharsets.UTF_8),
                buf.getLong(),
                buf.getDouble());
          });

  static long cpuNanos() {
    return ((com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean())
        .getProcessCpuTime();
  }

  static Reading parse(byte[] value) {
    try {
      JsonNode v = JSON.readTree(value);
      long end = Instant.parse(v.get("interval_end").asText()).toEpochMilli();
      JsonNode delta = v.get("delta");
      return new Reading(
          v.get("district").asText(),
          v.get("obis").asText(),
          end - v.get("interval_seconds").asLong() * 1000,
          delta == null || delta.isNull() ? 0.0 : delta.asDouble());
    } catch (java.io.IOException e) {
      throw new IllegalArgumentException(e);
    }
  }

  /** Event time is the reading interval's start (what IOC's processor windows by). */
  public static final class IntervalStart implements TimestampExtractor {
    public IntervalStart() {}

    @Override
    public long extract(org.apache.kafka.clients.consumer.ConsumerRecord<Object, Object> rec, long partitionTime) {
      Object v = rec.value();
      if (v instanceof Reading r) {
        return r.startMs();
      }
      return rec.timestamp();
    }
  }

  static Agg add(Reading r, Agg a) {
    long now = System.nanoTime();
    t1Nanos = now;
    c1Nanos = cpuNanos();
    lastUpdateNanos = now;
    UPDATES.incrementAndGet();
    return new Agg(a.readings() + 1, a.kwh() + r.delta());
  }

  public static void main(String[] args) throws Exception {
    String bootstrap = args[0];
    String topic = args[1];
    String stateDir = args[2];
    String guarantee = args.length > 3 ? args[3] : "at_least_once";
    double idleSeconds = args.length > 4 ? Double.parseDouble(args[4]) : 5.0;

    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, "bench-kstreams-" + UUID.randomUUID().toString().substring(0, 6));
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
    p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, -1); // the broker's default
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
    p.put(StreamsConfig.DEFAULT_TIMESTAMP_EXTRACTOR_CLASS_CONFIG, IntervalStart.class);

    StreamsBuilder b = new StreamsBuilder();
    // The value is parsed once at the source (the timestamp extractor then reads the parsed interval start).
    Serde<Reading> sourceSerde =
        Serdes.serdeFrom(READING_SERDE.serializer(), (t, bytes) -> bytes == null ? null : parse(bytes));
    KGroupedStream<String, Reading> byDistrict =
        b.stream(topic, Consumed.with(Serdes.ByteArray(), sourceSerde))
            .peek(
                (k, v) -> {
                  if (READ.getAndIncrement() == 0) {
                    t0Nanos = System.nanoTime();
                    c0Nanos = cpuNanos();
                  }
                })
            .filter((k, r) -> r != null && ENERGY_IMPORT.equals(r.obis()))
            .groupBy((k, r) -> r.district(), Grouped.with("by-district", Serdes.String(), READING_SERDE));
    Duration grace = Duration.ofDays(1);
    byDistrict
        .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMinutes(15), grace))
        .aggregate(
            () -> new Agg(0, 0.0),
            (district, r, a) -> add(r, a),
            Materialized.<String, Agg, WindowStore<Bytes, byte[]>>as("quarter")
                .withKeySerde(Serdes.String())
                .withValueSerde(AGG_SERDE));
    byDistrict
        .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofDays(1), grace))
        .aggregate(
            () -> new Agg(0, 0.0),
            (district, r, a) -> add(r, a),
            Materialized.<String, Agg, WindowStore<Bytes, byte[]>>as("day")
                .withKeySerde(Serdes.String())
                .withValueSerde(AGG_SERDE));

    KafkaStreams streams = new KafkaStreams(b.build(), p);
    streams.setUncaughtExceptionHandler(
        e -> {
          e.printStackTrace();
          System.out.println("RESULT {\"error\": \"" + e.toString().replace("\"", "'") + "\"}");
          System.out.flush();
          Runtime.getRuntime().halt(1);
          return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse
              .SHUTDOWN_CLIENT;
        });
    streams.start();
    long started = System.nanoTime();
    while (true) {
      Thread.sleep(100);
      long now = System.nanoTime();
      if (UPDATES.get() > 0 && now - lastUpdateNanos > (long) (idleSeconds * 1e9)) {
        break;
      }
      if (UPDATES.get() == 0 && now - started > 120e9) {
        break;
      }
    }
    TreeMap<String, double[]> quarters = new TreeMap<>();
    long lateDropped = 0;
    if (UPDATES.get() > 0) {
      ReadOnlyWindowStore<String, Agg> store =
          streams.store(
              StoreQueryParameters.fromNameAndType("quarter", QueryableStoreTypes.<String, Agg>windowStore()));
      try (KeyValueIterator<Windowed<String>, Agg> it = store.all()) {
        while (it.hasNext()) {
          KeyValue<Windowed<String>, Agg> kv = it.next();
          quarters.put(
              kv.key.key() + "|" + kv.key.window().start(), new double[] {kv.value.readings(), kv.value.kwh()});
        }
      }
      // Kafka Streams counts what its windows refused as late in a task-level sensor
      for (var m : streams.metrics().entrySet()) {
        if (m.getKey().name().equals("dropped-records-total")) {
          Object v = m.getValue().metricValue();
          if (v instanceof Number n) {
            lateDropped += n.longValue();
          }
        }
      }
    }
    streams.close(Duration.ofSeconds(10));
    double wall = (t1Nanos - t0Nanos) / 1e9;
    double cpu = (c1Nanos - c0Nanos) / 1e9;
    long n = READ.get();
    StringBuilder out = new StringBuilder();
    out.append(String.format(Locale.ROOT, "{\"events\": %d, \"window_updates\": %d, \"seconds\": %.3f, ", n, UPDATES.get(), wall));
    out.append(String.format(Locale.ROOT, "\"events_per_s\": %d, \"cpu_s_per_million\": %.2f, ", wall > 0 ? Math.round(n / wall) : 0, n > 0 ? cpu / n * 1e6 : 0.0));
    out.append(String.format(Locale.ROOT, "\"peak_rss_mib\": %.1f, \"dropped_records\": %d, \"guarantee\": \"%s\", ", peakRssMib(), lateDropped, guarantee));
    out.append("\"client\": \"kafka-streams ").append(org.apache.kafka.common.utils.AppInfoParser.getVersion()).append("\", \"quarters\": {");
    boolean first = true;
    for (var e : quarters.entrySet()) {
      if (!first) {
        out.append(", ");
      }
      first = false;
      out.append('"').append(e.getKey()).append("\": [")
          .append((long) e.getValue()[0]).append(", ").append(String.format(Locale.ROOT, "%.6f", e.getValue()[1])).append(']');
    }
    out.append("}}");
    System.out.println("RESULT " + out);
    System.out.flush();
    System.exit(0);
  }

  static double peakRssMib() {
    try {
      for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
        if (line.startsWith("VmHWM:")) {
          return Long.parseLong(line.replaceAll("[^0-9]", "")) / 1024.0;
        }
      }
    } catch (java.io.IOException e) {
      // not Linux
    }
    return 0.0;
  }
}
