package punt

import "os"

func writeSysctl(path, v string) error { return os.WriteFile(path, []byte(v), 0) }
