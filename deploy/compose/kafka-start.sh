#!/bin/bash
# Starts one broker of the compose cluster with SASL/SCRAM-SHA-512 and ACLs (StandardAuthorizer). The
# server properties are the container's KAFKA_* environment (as the apache/kafka image maps it: name
# lower-cased, "_" -> ".", "__" -> "_", "___" -> "-"); the super user ioc-admin's SCRAM credential is
# written into the metadata log when the storage is formatted (KRaft has no other bootstrap for it).
set -euo pipefail
P=/tmp/server.properties
: > "$P"
while IFS='=' read -r name value; do
  case "$name" in
    KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_LOG4J_OPTS|KAFKA_JMX_OPTS) continue ;;
    KAFKA_*)
      key="${name#KAFKA_}"
      key="$(echo "$key" | tr '[:upper:]' '[:lower:]' | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')"
      echo "$key=$value" >> "$P" ;;
  esac
done < <(env)
ADMIN_JAAS="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"ioc-admin\" password=\"${IOC_KAFKA_ADMIN_PASSWORD:?}\";"
echo "listener.name.internal.scram-sha-512.sasl.jaas.config=$ADMIN_JAAS" >> "$P"
# The health check's client configuration (the broker refuses anonymous clients).
cat > /tmp/admin.properties <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$ADMIN_JAAS
PROPS
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted -t "${CLUSTER_ID:?}" -c "$P" \
  --add-scram "SCRAM-SHA-512=[name=ioc-admin,password=${IOC_KAFKA_ADMIN_PASSWORD}]"
exec /opt/kafka/bin/kafka-server-start.sh "$P"
