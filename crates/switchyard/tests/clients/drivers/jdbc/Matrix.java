// The driver matrix with pgjdbc (Debian's libpostgresql-jdbc-java), see ../README.md.
// Run as a single source file: java -cp /usr/share/java/postgresql.jar Matrix.java

import java.io.StringReader;
import java.io.StringWriter;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Callable;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public class Matrix {
    static final Map<String, String> ENV = System.getenv();
    static final boolean SESSION = "session".equals(ENV.get("SY_MODE"));
    static final String TABLE = ENV.get("SY_TABLE");
    // In transaction mode a notification comes through the listener's hub: its sender pid is
    // the pooled server process the NOTIFY ran on, not the process id of the sender's key.
    static final String TRANSACTION_NOTIFY =
        "delivered through the hub (transaction mode: the sender pid is its server's)";

    static class Skip extends Exception {
        Skip(String why) { super(why); }
    }

    static Connection connectAs(String user, String password, String... extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        if (!password.isEmpty()) p.setProperty("password", password);
        p.setProperty("connectTimeout", "10");
        p.setProperty("socketTimeout", "40");
        for (int i = 0; i + 1 < extra.length; i += 2) p.setProperty(extra[i], extra[i + 1]);
        String url = "jdbc:postgresql://" + ENV.get("SY_HOST") + ":" + ENV.get("SY_PORT") + "/"
            + ENV.get("SY_DB") + "?sslmode=disable";
        return DriverManager.getConnection(url, p);
    }

    static Connection connect(String... extra) throws SQLException {
        return connectAs(ENV.get("SY_USER"), ENV.get("SY_PASSWORD"), extra);
    }

    static void expect(boolean cond, String what) {
        if (!cond) throw new AssertionError("expected: " + what);
    }

    static Object one(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(sql)) {
            r.next();
            return r.getObject(1);
        }
    }

    static String connectScram() throws Exception {
        try (Connection c = connect()) {
            Object user = one(c, "SELECT current_user");
            expect(ENV.get("SY_USER").equals(user), "current_user " + user);
            return "as " + user;
        }
    }

    static String simpleQuery() throws Exception {
        try (Connection c = connect("preferQueryMode", "simple")) {
            try (Statement s = c.createStatement()) {
                s.execute("SELECT 1; SELECT 2");
            }
            expect("simple".equals(one(c, "SELECT 'simple'")), "value");
            return "preferQueryMode=simple";
        }
    }

    static String extendedQuery() throws Exception {
        try (Connection c = connect();
             PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1")) {
            ps.setInt(1, 41);
            try (ResultSet r = ps.executeQuery()) {
                r.next();
                expect(r.getInt(1) == 42, "42");
            }
            return "";
        }
    }

    static String preparedReuse() throws Exception {
        // prepareThreshold=1: a named server-side statement from the first execution on.
        try (Connection c = connect("prepareThreshold", "1")) {
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int * 2")) {
                for (int i = 0; i < 3; i++) {
                    ps.setInt(1, i);
                    try (ResultSet r = ps.executeQuery()) {
                        r.next();
                        expect(r.getInt(1) == i * 2, "value " + i);
                    }
                    c.commit();
                }
            }
            return "prepareThreshold=1, 3 transactions";
        }
    }

    static String pipeline() throws Exception {
        try (Connection c = connect()) {
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS " + TABLE + "; CREATE TABLE " + TABLE
                    + " (id int, name text)");
            }
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + TABLE
                    + " VALUES (?, ?)")) {
                for (int i = 0; i < 100; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "row " + i);
                    ps.addBatch();
                }
                ps.executeBatch();
            }
            expect(((Number) one(c, "SELECT count(*) FROM " + TABLE)).intValue() == 100, "100");
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE " + TABLE);
            }
            return "executeBatch: 100 inserts in one flight";
        }
    }

    static String copy() throws Exception {
        try (Connection c = connect()) {
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS " + TABLE + "; CREATE TABLE " + TABLE
                    + " (id int, name text)");
            }
            StringBuilder in = new StringBuilder();
            for (int i = 0; i < 1000; i++) in.append(i).append("\trow ").append(i).append('\n');
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            long n = cm.copyIn("COPY " + TABLE + " FROM STDIN", new StringReader(in.toString()));
            expect(n == 1000, "copied in " + n);
            StringWriter out = new StringWriter();
            cm.copyOut("COPY " + TABLE + " TO STDOUT", out);
            expect(out.toString().equals(in.toString()), "the same rows out");
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE " + TABLE);
            }
            return "1000 rows in and out (CopyManager)";
        }
    }

    static String cancel() throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            Thread t = new Thread(() -> {
                try {
                    Thread.sleep(500);
                    s.cancel();
                } catch (Exception e) {
                    // The assertion below reports it.
                }
            });
            long started = System.nanoTime();
            t.start();
            String state = "not cancelled";
            try {
                s.execute("SELECT pg_sleep(20)");
            } catch (SQLException e) {
                state = e.getSQLState();
            }
            t.join();
            double took = (System.nanoTime() - started) / 1e9;
            expect("57014".equals(state), "57014, got " + state);
            expect(took < 10, "took " + took);
            expect("after".equals(one(c, "SELECT 'after'")), "usable after");
            return String.format("cancelled after %.2fs", took);
        }
    }

    static String listenNotify() throws Exception {
        try (Connection listener = connect(); Connection sender = connect()) {
            try (Statement s = listener.createStatement()) {
                s.execute("LISTEN matrix");
            }
            try (Statement s = sender.createStatement()) {
                s.execute("NOTIFY matrix, 'hello'");
            }
            PGNotification[] got = listener.unwrap(PGConnection.class).getNotifications(10000);
            expect(got != null && got.length == 1, "one notification");
            int senderPid = sender.unwrap(PGConnection.class).getBackendPID();
            expect("hello".equals(got[0].getParameter()), got[0].getParameter());
            if (!SESSION) return TRANSACTION_NOTIFY;
            expect(got[0].getPID() == senderPid,
                "sender pid " + got[0].getPID() + ", its key says " + senderPid);
            return "delivered; sender pid matches its key";
        }
    }

    static String terminatedBackend() throws Exception {
        try (Connection c = connect(); Connection admin = connectAs(ENV.get("SY_ADMIN_USER"), "")) {
            Object pid = one(c, "SELECT pg_backend_pid()");
            Object ended = one(admin, "SELECT pg_terminate_backend(" + pid + ", 5000)");
            // (Transaction mode: another client may have ended that server process already.)
            expect(Boolean.TRUE.equals(ended) || !SESSION, "terminated");
            if (SESSION) {
                String state = "still ran";
                try {
                    one(c, "SELECT 1");
                } catch (SQLException e) {
                    state = e.getSQLState();
                }
                expect(!"still ran".equals(state), "the next query fails");
                try (Connection again = connect()) {
                    expect(((Number) one(again, "SELECT 1")).intValue() == 1, "new connection");
                }
                return "next query: " + state + "; a new connection works";
            }
            expect(((Number) one(c, "SELECT 1")).intValue() == 1, "next query");
            return "next query works";
        }
    }

    static String clientEncoding() throws Exception {
        try (Connection c = connect()) {
            try (Statement s = c.createStatement()) {
                s.execute("SET client_encoding = 'utf-8'");
            }
            Object shown = one(c, "SHOW client_encoding");
            expect("UTF8".equals(shown), "SHOW " + shown);
            return "SHOW: UTF8 (pgjdbc accepts only UTF8 reported back)";
        }
    }

    static String poolHealth() throws Exception {
        throw new Skip("pgjdbc has no pool of its own (applications bring HikariCP or similar)");
    }

    static String json(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            if (ch == '"' || ch == '\\') b.append('\\').append(ch);
            else if (ch < 0x20) b.append(String.format("\\u%04x", (int) ch));
            else b.append(ch);
        }
        return b.append('"').toString();
    }

    /** One connection writing every 50 ms for SY_SECONDS, reconnecting after an error that
     *  ended it; prints each error's SQLSTATE, the longest statement and the writes after the
     *  last error. */
    static void failover() throws Exception {
        long deadline = System.nanoTime()
            + (long) (Double.parseDouble(ENV.getOrDefault("SY_SECONDS", "14")) * 1e9);
        StringBuilder errors = new StringBuilder();
        double longest = 0;
        int total = 0, after = 0;
        Connection c = null;
        while (System.nanoTime() < deadline) {
            long started = System.nanoTime();
            try {
                if (c == null) c = connect();
                try (Statement s = c.createStatement()) {
                    s.execute("INSERT INTO " + TABLE + " (driver) VALUES ('jdbc')");
                }
                total++;
                after++;
            } catch (SQLException e) {
                if (errors.length() > 0) errors.append(',');
                errors.append(json(e.getSQLState() == null ? "SQLException" : e.getSQLState()));
                after = 0;
                if (c != null) {
                    try { c.close(); } catch (SQLException ignored) { /* gone already */ }
                }
                c = null;
            }
            longest = Math.max(longest, (System.nanoTime() - started) / 1e9);
            Thread.sleep(50); // pacing of the workload, not a synchronisation
        }
        if (c != null) c.close();
        System.out.println(String.format("{\"failover\":{\"ok\":true,\"errors\":[%s],"
            + "\"longest\":%.3f,\"total\":%d,\"after_last_error\":%d}}",
            errors, longest, total, after));
        System.exit(0);
    }

    public static void main(String[] args) throws Exception {
        if ("failover".equals(ENV.get("SY_SCENARIO"))) failover();
        Map<String, Callable<String>> scenarios = new LinkedHashMap<>();
        scenarios.put("connect_scram", Matrix::connectScram);
        scenarios.put("simple_query", Matrix::simpleQuery);
        scenarios.put("extended_query", Matrix::extendedQuery);
        scenarios.put("prepared_reuse", Matrix::preparedReuse);
        scenarios.put("pipeline", Matrix::pipeline);
        scenarios.put("copy", Matrix::copy);
        scenarios.put("cancel", Matrix::cancel);
        scenarios.put("listen_notify", Matrix::listenNotify);
        scenarios.put("terminated_backend", Matrix::terminatedBackend);
        scenarios.put("client_encoding", Matrix::clientEncoding);
        scenarios.put("pool_health", Matrix::poolHealth);
        StringBuilder out = new StringBuilder("{");
        for (Map.Entry<String, Callable<String>> e : scenarios.entrySet()) {
            long started = System.nanoTime();
            String result;
            try {
                String detail = e.getValue().call();
                result = "\"ok\":true,\"detail\":" + json(detail == null ? "" : detail);
            } catch (Skip s) {
                result = "\"skip\":" + json(s.getMessage());
            } catch (Throwable t) {
                result = "\"ok\":false,\"detail\":" + json(t.toString());
            }
            double took = (System.nanoTime() - started) / 1e9;
            if (out.length() > 1) out.append(',');
            out.append(json(e.getKey())).append(":{").append(result)
                .append(String.format(",\"seconds\":%.3f}", took));
        }
        System.out.println(out.append('}'));
        System.exit(0);
    }
}
